"""Waiting for a request (`gdpr request show --wait` / `--follow`) until it is settled:
final or failed. A state waiting cannot leave by itself (awaiting approval, on hold)
is refused at once, in one line, instead of waiting out the timeout."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from compliance.cli.output import LiveLine
from compliance.db import utcnow
from compliance.errors import IllegalTransitionError, LegalHoldError, RetryableError
from compliance.lifecycle import FINAL
from compliance.models import DsrRequest, DsrStep, RequestStatus
from compliance.queries import held_summary, trouble

SETTLED = FINAL | {RequestStatus.FAILED}
POLL_SECONDS = 0.5

Snapshot = tuple[DsrRequest, Sequence[DsrStep], Sequence[str]]


@dataclass(frozen=True)
class Watch:
    """How to wait: fetch a snapshot, describe it in one line (for `live`), pace."""

    fetch: Callable[[], Snapshot]
    timeout: float  # seconds
    describe: Callable[[Snapshot], str] = lambda snapshot: str(snapshot[0].status)
    live: LiveLine | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], datetime] = utcnow  # wall time, for "next in 80 s"


def wait(watch: Watch) -> Snapshot:
    """The request's snapshot once it is settled; raises (one line) if it cannot settle
    by itself or is still open after `watch.timeout` seconds."""
    deadline = watch.clock() + watch.timeout
    snapshot = watch.fetch()
    try:
        while True:
            if watch.live is not None:
                watch.live.show(watch.describe(snapshot))
            request = snapshot[0]
            if RequestStatus(request.status) in SETTLED:
                return snapshot
            refuse_if_stuck(request)
            if watch.clock() >= deadline:
                raise _timed_out(request, watch.timeout, watch.now())
            watch.sleep(POLL_SECONDS)
            snapshot = watch.fetch()
    finally:
        if watch.live is not None:
            watch.live.close()


def refuse_if_stuck(request: DsrRequest) -> None:
    """Raise when waiting cannot end without someone acting."""
    rid = request.id
    if request.status == RequestStatus.AWAITING_APPROVAL:
        raise IllegalTransitionError(
            f"request {rid} is awaiting approval: waiting cannot end until a second operator"
            f" runs `gdpr request approve {rid}`"
        )
    if request.status == RequestStatus.ON_HOLD:
        raise LegalHoldError(
            f"request {rid} is on hold ({held_summary(request.receipt)}): waiting cannot end"
            f" until the holds end; `gdpr request show {rid}` shows what is held"
        )


def _timed_out(request: DsrRequest, timeout: float, now: datetime) -> RetryableError:
    why = trouble(request, now)
    return RetryableError(
        f"request {request.id} is still {request.status} after {timeout:g} s"
        + (f" ({why})" if why else "")
        + f"; keep watching with `gdpr request show {request.id} --follow`"
    )
