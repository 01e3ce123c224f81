"""Run records and leases of retention sweeps, in the control database.

- A policy has one lease (`retention_lease`): a run starts only while nobody else holds
  it, so two beat processes started by mistake still run one sweep. The lease names the
  run it belongs to and is renewed as its parts make progress; a run whose worker died
  lets its lease expire, and the next start resumes that run, at its cutoff.
- A run (`retention_run`) has parts (`retention_part`): key ranges worked one task at a
  time under the part's own lease. A part's cursor is sealed with the keyring (row keys
  can be identities, e.g. a user id).
- Counts and timings are numbers only; every run start and finish is audited.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from compliance import audit
from compliance.db import Database
from compliance.errors import LeaseHeldError
from compliance.keyring import Keyring
from compliance.models import RetentionLease, RetentionPart, RetentionRun
from compliance.retention.policy import Policy

RUNNING = "running"
COMPLETED = "completed"
STOPPED = "stopped"  # a bound (items, seconds) was reached; the next run continues
FAILED = "failed"
PLANNED = "planned"  # a dry run: counted, nothing changed
PENDING = "pending"
DONE = "done"
UNFINISHED = (RUNNING,)
KEEP_TIMINGS = 5000  # batch timings kept per run, for the p99


@dataclass(frozen=True)
class Store:
    """The control database and what the records need: the keyring, the lease length."""

    db: Database
    keyring: Keyring
    lease_seconds: int


# --- leases ------------------------------------------------------------------------


def take_lease(store: Store, policy: str, owner: str, now: datetime) -> RetentionLease:
    """The policy's lease for `owner`, or `LeaseHeldError` naming until when it is held.
    A lease whose owner was a process of this host that is gone is free at once."""
    until = now + timedelta(seconds=store.lease_seconds)
    with store.db.session() as session:
        current = session.get(RetentionLease, policy)
        if current is None:
            session.add(RetentionLease(policy=policy))
            session.flush()
        holder = current.owner if current is not None else None
    with store.db.session() as session:
        free = is_free(RetentionLease.expires_at, RetentionLease.owner, now, holder)
        taken = session.execute(
            update(RetentionLease)
            .where(RetentionLease.policy == policy, free | (RetentionLease.owner == owner))
            .values(owner=owner, expires_at=until)
        ).rowcount  # type: ignore[attr-defined]
        lease = session.get_one(RetentionLease, policy, populate_existing=True)
        if taken != 1:
            held_until = lease.expires_at.isoformat() if lease.expires_at else "?"
            raise LeaseHeldError(
                f"retention policy {policy} is being swept by another run (lease held until"
                f" {held_until}); try again later"
            )
        return lease


def bind_lease(session: Session, policy: str, run_id: int) -> None:
    session.execute(
        update(RetentionLease).where(RetentionLease.policy == policy).values(run_id=run_id)
    )


def renew_lease(store: Store, policy: str, run_id: int, now: datetime) -> None:
    """Keep the policy's lease for its run while parts make progress."""
    until = now + timedelta(seconds=store.lease_seconds)
    with store.db.session() as session:
        session.execute(
            update(RetentionLease)
            .where(RetentionLease.policy == policy, RetentionLease.run_id == run_id)
            .values(expires_at=until)
        )


def free_lease(session: Session, policy: str, run_id: int) -> None:
    session.execute(
        update(RetentionLease)
        .where(RetentionLease.policy == policy, RetentionLease.run_id == run_id)
        .values(owner=None, expires_at=None)
    )


# --- runs and parts ----------------------------------------------------------------


def unfinished_run(store: Store, policy: str) -> RetentionRun | None:
    """The policy's run left running (its worker died, its lease expired), if any."""
    with store.db.session() as session:
        return session.scalars(
            select(RetentionRun)
            .where(RetentionRun.policy == policy, RetentionRun.status.in_(UNFINISHED))
            .order_by(RetentionRun.id.desc())
            .limit(1)
        ).first()


def last_run(store: Store, policy: str) -> RetentionRun | None:
    with store.db.session() as session:
        return session.scalars(
            select(RetentionRun)
            .where(RetentionRun.policy == policy, RetentionRun.dry_run.is_(False))
            .order_by(RetentionRun.id.desc())
            .limit(1)
        ).first()


def create_run(
    store: Store,
    policy: Policy,
    *,
    cutoff: datetime,
    cursors: Sequence[Mapping[str, Any]],
    trigger: str,
    actor: str,
    now: datetime,
    dry_run: bool = False,
    counts: Mapping[str, Any] | None = None,
) -> RetentionRun:
    """A new run with one part per cursor; audited. A dry run is born finished."""
    with store.db.session() as session:
        run = RetentionRun(
            policy=policy.name,
            kind=policy.kind.value,
            cutoff=cutoff,
            dry_run=dry_run,
            status=PLANNED if dry_run else RUNNING,
            trigger=trigger,
            actor=actor,
            counts=dict(counts or {}),
            started_at=now,
            finished_at=now if dry_run else None,
        )
        session.add(run)
        session.flush()
        for index, cursor in enumerate(cursors):
            session.add(
                RetentionPart(
                    run_id=run.id,
                    part=index,
                    status=PENDING,
                    cursor_sealed=seal_cursor(store.keyring, run.id, index, cursor),
                    counts={},
                    attempts=0,
                    updated_at=now,
                )
            )
        if not dry_run:
            bind_lease(session, policy.name, run.id)
        audit.record(
            session,
            actor=actor,
            action="retention.dry_run" if dry_run else "retention.run_started",
            now=now,
            details={
                "run": run.id,
                "policy": policy.name,
                "cutoff": cutoff.isoformat(),
                "parts": len(cursors),
                **{k: v for k, v in (counts or {}).items() if isinstance(v, int)},
            },
        )
        return run


def parts_of(store: Store, run_id: int) -> list[RetentionPart]:
    with store.db.session() as session:
        return list(
            session.scalars(
                select(RetentionPart)
                .where(RetentionPart.run_id == run_id)
                .order_by(RetentionPart.part)
            )
        )


def claim_part(store: Store, part_id: int, owner: str, now: datetime) -> RetentionPart | None:
    """Take a part's lease (None: finished, or another task works it right now). A lease
    of a process of this host that is gone is free at once."""
    until = now + timedelta(seconds=store.lease_seconds)
    with store.db.session() as session:
        holder = session.scalar(
            select(RetentionPart.lease_owner).where(RetentionPart.id == part_id)
        )
    with store.db.session() as session:
        free = is_free(RetentionPart.lease_until, RetentionPart.lease_owner, now, holder)
        taken = session.execute(
            update(RetentionPart)
            .where(
                RetentionPart.id == part_id,
                RetentionPart.status.in_((PENDING, RUNNING)),
                RetentionPart.run_id.in_(
                    select(RetentionRun.id).where(RetentionRun.status == RUNNING)
                ),  # a run closed (e.g. another part failed): its parts stop
                free,
            )
            .values(
                status=RUNNING,
                lease_owner=owner,
                lease_until=until,
                attempts=RetentionPart.attempts + 1,
                updated_at=now,
            )
        ).rowcount  # type: ignore[attr-defined]
        if taken != 1:
            return None
        return session.get_one(RetentionPart, part_id, populate_existing=True)


def save_part(
    store: Store,
    part: RetentionPart,
    *,
    owner: str,
    cursor: Mapping[str, Any],
    add: Mapping[str, Any],
    status: str,
    now: datetime,
    keep_lease: bool,
) -> None:
    """Record a chunk's progress under our lease; `LeaseHeldError` if it was taken.

    The run's row is locked first (the order `finish_run` takes them in): when the run
    was closed while this chunk worked (another part failed), what the chunk did is
    added to the run's counts too, and audited, so the evidence misses nothing."""
    with store.db.session() as session:
        run = session.get_one(RetentionRun, part.run_id, with_for_update=True)
        current = session.get_one(RetentionPart, part.id, with_for_update=True)
        if current.lease_owner != owner:
            raise LeaseHeldError(
                f"retention part {part.run_id}/{part.part} was taken over by another task"
            )
        current.cursor_sealed = seal_cursor(store.keyring, part.run_id, part.part, cursor)
        current.counts = merge_counts(current.counts or {}, add)
        current.status = status
        current.updated_at = now
        current.error = None
        if keep_lease:
            current.lease_until = now + timedelta(seconds=store.lease_seconds)
        else:
            current.lease_owner, current.lease_until = None, None
        if run.status != RUNNING:
            _count_after_finish(session, run, part.part, add, now)


def _count_after_finish(
    session: Session, run: RetentionRun, part: int, add: Mapping[str, Any], now: datetime
) -> None:
    run.counts = merge_counts(run.counts or {}, add)
    audit.record(
        session,
        actor=run.actor,
        action="retention.counted_after_finish",
        now=now,
        details={
            "run": run.id,
            "policy": run.policy,
            "part": part,
            **{k: v for k, v in add.items() if isinstance(v, int | float)},
        },
    )


def fail_part(store: Store, part_id: int, error: str, now: datetime) -> None:
    """Record an error and let the part go (it is retried from its cursor)."""
    with store.db.session() as session:
        part = session.get_one(RetentionPart, part_id)
        part.error = error[:2000]
        part.lease_owner, part.lease_until = None, None
        part.updated_at = now


def merge_counts(counts: Mapping[str, Any], add: Mapping[str, Any]) -> dict[str, Any]:
    """Sum counts; `max_*` keys keep the maximum."""
    merged = dict(counts)
    for key, value in add.items():
        if isinstance(value, list):
            merged[key] = [*merged.get(key, []), *value][-KEEP_TIMINGS:]
        elif key.startswith("max_"):
            merged[key] = max(float(merged.get(key, 0)), float(value))
        else:
            merged[key] = merged.get(key, 0) + value
    return merged


def finish_run(
    store: Store, run_id: int, *, actor: str, now: datetime, error: str | None = None
) -> RetentionRun | None:
    """Close a run whose parts all ended (None if some part is still open); audited."""
    with store.db.session() as session:
        run = session.get_one(RetentionRun, run_id, with_for_update=True)
        if run.status != RUNNING:
            return None
        parts = list(session.scalars(select(RetentionPart).where(RetentionPart.run_id == run_id)))
        if error is None and any(p.status in (PENDING, RUNNING) for p in parts):
            return None
        totals: dict[str, Any] = dict(run.counts or {})
        for part in parts:
            totals = merge_counts(totals, part.counts or {})
        run.counts = totals
        stopped = any(p.status == STOPPED for p in parts)
        run.status = FAILED if error else (STOPPED if stopped else COMPLETED)
        run.error = error
        run.finished_at = now
        free_lease(session, run.policy, run_id)
        audit.record(
            session,
            actor=actor,
            action="retention.run_finished",
            now=now,
            details={
                "run": run_id,
                "policy": run.policy,
                "status": run.status,
                **{k: v for k, v in totals.items() if isinstance(v, int | float)},
            },
        )
        return run


def history(store: Store, policy: str | None, limit: int) -> list[RetentionRun]:
    with store.db.session() as session:
        query = select(RetentionRun).order_by(RetentionRun.id.desc()).limit(limit)
        if policy is not None:
            query = query.where(RetentionRun.policy == policy)
        return list(session.scalars(query))


def open_parts(store: Store, now: datetime, idle_seconds: int) -> list[int]:
    """Parts of running runs that nobody works (a lost message, a killed worker)."""
    idle = now - timedelta(seconds=idle_seconds)
    with store.db.session() as session:
        return list(
            session.scalars(
                select(RetentionPart.id)
                .join(RetentionRun, RetentionRun.id == RetentionPart.run_id)
                .where(
                    RetentionRun.status == RUNNING,
                    RetentionPart.status.in_((PENDING, RUNNING)),
                    (RetentionPart.lease_until.is_(None)) | (RetentionPart.lease_until < now),
                    RetentionPart.updated_at < idle,
                )
            )
        )


# --- owners ------------------------------------------------------------------------


def owner_name() -> str:
    """A lease owner: ``host:pid:nonce`` (the nonce tells two runs of one process apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_free(
    until: InstrumentedAttribute[datetime | None],
    owner: InstrumentedAttribute[str | None],
    now: datetime,
    holder: str | None,
) -> ColumnElement[bool]:
    """A lease (`until`, `owner` columns) anyone may take: none, expired, or held by
    `holder` (as read just before) when that is a process of this host that is gone. The
    update that takes it repeats the condition, so two takers never both win."""
    free = until.is_(None) | (until < now)
    if holder is not None and gone(holder):
        free = free | (owner == holder)
    return free


def gone(owner: str | None) -> bool:
    """The owner was a process of this host that no longer runs (killed, crashed)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- sealed cursors ----------------------------------------------------------------


def seal_cursor(keyring: Keyring, run_id: int, part: int, cursor: Mapping[str, Any]) -> bytes:
    return keyring.seal(json.dumps(dict(cursor)).encode(), _aad(run_id, part))


def unseal_cursor(keyring: Keyring, part: RetentionPart) -> dict[str, Any]:
    if not part.cursor_sealed:
        return {}
    value: dict[str, Any] = json.loads(
        keyring.unseal(part.cursor_sealed, _aad(part.run_id, part.part))
    )
    return value


def _aad(run_id: int, part: int) -> bytes:
    return f"retention:{run_id}:{part}".encode()
