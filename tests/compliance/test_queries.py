"""What `request list` and `show` say holds a request up, and the next step: pure
functions of a request row (in memory, not stored)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from compliance.models import DsrRequest
from compliance.queries import next_steps, trouble
from tests.compliance.helpers import NOW

HELD = {"held": [{"source": "shop", "holds": [{"hold": 3, "legal_basis": "Art. 17(3)(e)"}]}]}


def request(status: str, **values: object) -> DsrRequest:
    return DsrRequest(
        id=uuid.uuid4(),
        kind="erasure",
        status=status,
        **{"attempts": 1, "dry_run": False, **values},
    )


def test_a_queued_request_with_an_error_is_retrying_with_why_the_attempt_and_when() -> None:
    found = request("queued", attempts=4, last_error="source crm unreachable")
    found.retry_at = NOW + timedelta(seconds=80)
    assert trouble(found, NOW) == "retrying: source crm unreachable (attempt 4, next in 80 s)"
    assert trouble(found, NOW + timedelta(seconds=81)) == (
        "retrying: source crm unreachable (attempt 4, retry due now)"
    )
    found.retry_at = NOW + timedelta(minutes=10)
    assert trouble(found, NOW).endswith("(attempt 4, next in 10 min)")  # type: ignore[union-attr]
    assert trouble(request("queued")) is None  # a fresh request: nothing holds it up


def test_an_erasure_on_hold_says_what_is_kept_and_a_dry_run_that_it_changed_nothing() -> None:
    held = request("on_hold", receipt=HELD)
    assert trouble(held) == (
        "on hold: shop kept by legal hold 3 (Art. 17(3)(e)); the rest is erased"
    )
    dry = request("on_hold", receipt=HELD, dry_run=True)
    assert trouble(dry) == (
        "on hold: shop kept by legal hold 3 (Art. 17(3)(e)); a dry run: nothing was changed"
    )


def test_the_next_step_names_the_command_to_run() -> None:
    waiting = request("awaiting_approval")
    assert next_steps(waiting) == [
        f"a second operator approves: gdpr request approve {waiting.id} (or reject it)"
    ]
    failed = request("failed", last_error="x")
    assert next_steps(failed)[0].startswith(f"fix the cause, then: gdpr request retry {failed.id}")
    assert next_steps(request("completed", dry_run=True)) == [
        "a dry run changed nothing: submit `gdpr request erase` without --dry-run"
    ]
    assert next_steps(request("completed", receipt={})) == []
