"""`compliance.retention.runs` on both control databases: once a run is closed because
one part failed, its other parts stop, and what a chunk in flight did still counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from compliance.config import Settings
from compliance.db import Database
from compliance.keyring import load_keyring
from compliance.models import AuditEvent, RetentionRun
from compliance.retention import runs
from compliance.retention.policy import Policy, PolicyKind

NOW = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
POLICY = Policy(
    name="shop.sessions", source="shop", kind=PolicyKind.ROWS, days=30, location="sessions"
)


def test_a_failed_run_stops_its_other_parts_and_keeps_a_late_chunks_counts(
    db: Database, settings: Settings
) -> None:
    store = runs.Store(db, load_keyring(settings), lease_seconds=60)
    run = runs.create_run(
        store,
        POLICY,
        cutoff=NOW - timedelta(days=30),
        cursors=[{}, {}, {}],
        trigger="beat",
        actor="beat",
        now=NOW,
    )
    first, second, third = runs.parts_of(store, run.id)
    working = runs.claim_part(store, second.id, "worker-b", NOW)
    assert working is not None
    assert runs.claim_part(store, first.id, "worker-a", NOW) is not None

    runs.fail_part(store, first.id, "source shop: permission denied", NOW)
    closed = runs.finish_run(store, run.id, actor="worker-a", now=NOW, error="permission denied")
    assert closed is not None and closed.status == runs.FAILED

    # the part that never started is not taken any more; the one in flight saves its chunk
    assert runs.claim_part(store, third.id, "worker-c", NOW) is None
    runs.save_part(
        store,
        working,
        owner="worker-b",
        cursor={"after": 7},
        add={"deleted": 5},
        status=runs.RUNNING,
        now=NOW,
        keep_lease=False,
    )
    assert runs.claim_part(store, second.id, "worker-b", NOW + timedelta(minutes=5)) is None
    with db.session() as session:
        final = session.get_one(RetentionRun, run.id)
        late = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "retention.counted_after_finish")
        ).all()
    assert final.status == runs.FAILED
    assert final.counts["deleted"] == 5
    assert [e.details for e in late] == [
        {"run": run.id, "policy": "shop.sessions", "part": 1, "deleted": 5}
    ]


def test_a_running_run_takes_chunk_counts_from_its_parts_only(
    db: Database, settings: Settings
) -> None:
    store = runs.Store(db, load_keyring(settings), lease_seconds=60)
    run = runs.create_run(
        store, POLICY, cutoff=NOW, cursors=[{}], trigger="cli", actor="dora", now=NOW
    )
    (part,) = runs.parts_of(store, run.id)
    claimed = runs.claim_part(store, part.id, "worker-a", NOW)
    assert claimed is not None
    runs.save_part(
        store,
        claimed,
        owner="worker-a",
        cursor={},
        add={"deleted": 3},
        status=runs.DONE,
        now=NOW,
        keep_lease=False,
    )
    finished = runs.finish_run(store, run.id, actor="worker-a", now=NOW)
    assert finished is not None and finished.status == runs.COMPLETED
    assert finished.counts["deleted"] == 3  # counted once, from the part
