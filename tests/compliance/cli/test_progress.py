"""Progress while the CLI waits: one line redrawn in place on a terminal, plain lines
(at most one every few seconds, the last one always) elsewhere; waiting on a request
nobody moves on is refused at once; a timed-out wait says when the next try is.

`LiveLine` and `watch.wait` are driven with a fake clock and in-memory requests: pure
units, nothing to wait for.
"""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest

from compliance.cli.output import LiveLine
from compliance.cli.watch import Snapshot, Watch, wait
from compliance.errors import IllegalTransitionError, RetryableError
from compliance.models import DsrRequest
from tests.compliance.helpers import NOW


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_redrawn_in_place_and_cut_to_the_width() -> None:
    out, clock = Terminal(), Clock()
    line = LiveLine(tty=True, file=out, clock=clock, width=lambda: 30)
    line.show("queued")
    clock.now += 3
    line.show("running | shop export running rows=1200 | crm export pending")
    line.close()
    assert out.getvalue() == (
        "\r\x1b[K[   0 s] queued"
        "\r\x1b[K[   3 s] running | shop expor"  # 29 columns: the line never wraps
        "\n"
    )


def test_off_a_terminal_changes_are_plain_lines_at_most_every_few_seconds_the_last_kept() -> None:
    out, clock = io.StringIO(), Clock()
    line = LiveLine(tty=False, every=5, file=out, clock=clock)
    line.show("queued")
    line.show("queued")  # unchanged: nothing
    clock.now += 1
    line.show("running rows=10")  # too soon: kept for later
    clock.now += 1
    line.show("running rows=20")
    clock.now += 4
    line.show("running rows=30")  # 6 s after the first line
    clock.now += 1
    line.show("completed")
    line.close()  # the last text is printed, once
    assert out.getvalue().splitlines() == [
        "[   0 s] queued",
        "[   6 s] running rows=30",
        "[   7 s] completed",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def request(status: str, **values: object) -> DsrRequest:
    return DsrRequest(id=uuid.uuid4(), kind="export", status=status, **{"attempts": 0, **values})


def snapshots(*found: DsrRequest) -> list[Snapshot]:
    return [(r, [], ["email"]) for r in found]


def test_waiting_on_a_request_awaiting_approval_is_refused_at_once() -> None:
    clock, fetched = Clock(), snapshots(request("awaiting_approval"))
    watch = Watch(fetch=fetched.pop, timeout=600, clock=clock, sleep=clock.sleep)
    with pytest.raises(IllegalTransitionError, match="runs `gdpr request approve "):
        wait(watch)
    assert clock.now == 100.0  # not one poll slept


def test_waiting_ends_when_the_request_settles_and_shows_each_state_it_passed() -> None:
    clock, out = Clock(), io.StringIO()
    states = snapshots(request("completed"), request("running"), request("queued"))
    live = LiveLine(tty=False, every=0, file=out, clock=clock)
    watch = Watch(fetch=states.pop, timeout=60, live=live, clock=clock, sleep=clock.sleep)
    assert wait(watch)[0].status == "completed"
    assert [line.split("] ")[1] for line in out.getvalue().splitlines()] == [
        "queued",
        "running",
        "completed",
    ]


def test_a_timed_out_wait_says_why_the_request_waits_and_when_it_is_tried_next() -> None:
    clock = Clock()
    retrying = request(
        "queued",
        attempts=4,
        last_error="source crm unreachable",
        retry_at=NOW + timedelta(seconds=80),
    )
    watch = Watch(
        fetch=lambda: snapshots(retrying)[0],
        timeout=2,
        clock=clock,
        sleep=clock.sleep,
        now=lambda: NOW,
    )
    with pytest.raises(RetryableError) as raised:
        wait(watch)
    assert str(raised.value) == (
        f"request {retrying.id} is still queued after 2 s (retrying: source crm unreachable"
        f" (attempt 4, next in 80 s)); keep watching with `gdpr request show {retrying.id}"
        " --follow`"
    )
