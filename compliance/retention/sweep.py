"""Running retention policies: start a run under the policy's lease, work its parts in
bounded chunks, hand due subjects to the erasure cascade, finish and audit.

    start(ctx, "shop.sessions")      -> a run (or the unfinished one, resumed) + its parts
    work_part(ctx, part_id)          -> one chunk of one part: SWEPT (more left), DONE...
    run_inline(ctx, "shop.sessions") -> both, to the end, in this process (the CLI)

Celery beat calls `start` for every policy nightly (tasks/retention.py) and fans the parts
out to workers; each chunk re-enqueues the part until it is done. The cutoff is fixed
when a run starts; a run killed half-way is resumed at that cutoff from its parts'
cursors. A run stops early (``stopped``) at `retention_max_items` or
`retention_max_seconds`; the next run carries on from where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Protocol

from sqlalchemy import select

from compliance import metrics
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.dispatch import Dispatcher
from compliance.errors import ComplianceError, LeaseHeldError, NotFoundError, TerminalError
from compliance.identities import Identities, pseudonym, subject_pseudonym
from compliance.keyring import Keyring
from compliance.lifecycle import OPEN
from compliance.models import DsrRequest, RequestKind, RetentionPart, RetentionRun
from compliance.requests import Submission, submit
from compliance.retention import runs
from compliance.retention.catalog import Catalog, Entry
from compliance.retention.held import HoldView
from compliance.retention.policy import Limits, PolicyKind, PolicyPlan, PurgeResult
from compliance.sources.base import DataSource

log = logging.getLogger("gdpr.retention")

SAVE_EVERY_SECONDS = 5.0  # a chunk records its cursor at least this often...
SAVE_EVERY_BATCHES = 10  # ... and after this many batches


class PartOutcome(StrEnum):
    SKIPPED = "skipped"  # finished already, or another task works it now
    MORE = "more"  # a chunk is done; call again (re-enqueue)
    DONE = "done"  # the part is finished
    STOPPED = "stopped"  # the run reached its bound; the next run continues


class PartDispatcher(Protocol):
    def dispatch_retention_part(self, part_id: int) -> None:
        """Enqueue the next chunk of one part of a retention run (ids only)."""
        ...


@dataclass(frozen=True)
class SweepContext:
    """Everything a sweep needs; built by the task runtime or the CLI."""

    settings: Settings
    db: Database
    keyring: Keyring
    sources: Sequence[DataSource]
    requests: Dispatcher  # where the erasures of subject policies go
    clock: Callable[[], datetime] = utcnow
    actor: str = "retention"
    owner: str = field(default_factory=runs.owner_name)  # host:pid:nonce, for leases

    @cached_property
    def catalog(self) -> Catalog:
        """The sources' policies, collected once per context."""
        return Catalog.of(self.sources)

    @property
    def store(self) -> runs.Store:
        return runs.Store(self.db, self.keyring, self.settings.retention_lease_seconds)


@dataclass(frozen=True)
class Started:
    run: RetentionRun
    parts: tuple[int, ...]
    resumed: bool


# --- plan --------------------------------------------------------------------------


def plan(ctx: SweepContext, name: str | None = None) -> list[PolicyPlan]:
    """What a sweep would do now, per policy (counts only, nothing written)."""
    now = ctx.clock()
    view = HoldView.load(ctx.db, ctx.sources, now)
    return [
        entry.source.retention_plan(entry.policy, entry.policy.cutoff(now), view.held(entry.policy))
        for entry in ctx.catalog.select(name)
    ]


def dry_run(ctx: SweepContext, name: str | None, trigger: str = "cli") -> list[RetentionRun]:
    """Record what a sweep would do, as audited runs that changed nothing."""
    now = ctx.clock()
    recorded = []
    for found, entry in zip(plan(ctx, name), ctx.catalog.select(name), strict=True):
        counts = {"due": found.due, "held": found.held, "batches": len(found.batches)}
        recorded.append(
            runs.create_run(
                ctx.store,
                entry.policy,
                cutoff=found.cutoff,
                cursors=(),
                trigger=trigger,
                actor=ctx.actor,
                now=now,
                dry_run=True,
                counts=counts,
            )
        )
    return recorded


# --- start -------------------------------------------------------------------------


def start(ctx: SweepContext, name: str, *, trigger: str) -> Started:
    """Take the policy's lease and start a run (or resume the unfinished one)."""
    entry = ctx.catalog.get(name)
    now = ctx.clock()
    store = ctx.store
    runs.take_lease(store, name, ctx.owner, now)
    unfinished = runs.unfinished_run(store, name)
    if unfinished is not None:
        with ctx.db.session() as session:
            runs.bind_lease(session, name, unfinished.id)
        parts = tuple(p.id for p in runs.parts_of(store, unfinished.id))
        log.info("retention.run.resumed", extra={"run": unfinished.id, "policy": name})
        return Started(unfinished, parts, True)
    cutoff = entry.policy.cutoff(now)
    cursors = _cursors(ctx, entry, store)
    run = runs.create_run(
        store,
        entry.policy,
        cutoff=cutoff,
        cursors=cursors,
        trigger=trigger,
        actor=ctx.actor,
        now=now,
    )
    parts = tuple(p.id for p in runs.parts_of(store, run.id))
    log.info("retention.run.started", extra={"run": run.id, "policy": name, "parts": len(parts)})
    return Started(run, parts, False)


def _cursors(ctx: SweepContext, entry: Entry, store: runs.Store) -> list[Mapping[str, Any]]:
    """Where the parts of a new run start: where a stopped run stood, or split by key."""
    previous = runs.last_run(store, entry.policy.name)
    if previous is not None and previous.status == runs.STOPPED:
        left = [p for p in runs.parts_of(store, previous.id) if p.status == runs.STOPPED]
        if left:
            return [runs.unseal_cursor(ctx.keyring, p) for p in left]
    split = getattr(entry.source, "split", None)
    if entry.policy.kind == PolicyKind.ROWS and callable(split):
        found: list[Mapping[str, Any]] = split(
            entry.policy, ctx.settings.retention_parts, ctx.settings.retention_fanout_rows
        )
        return found
    return [{}]


# --- work --------------------------------------------------------------------------


def work_part(ctx: SweepContext, part_id: int, *, max_seconds: float | None = None) -> PartOutcome:
    """One chunk of one part, up to `max_seconds` (default: `retention_chunk_seconds`)."""
    store = ctx.store
    part = runs.claim_part(store, part_id, ctx.owner, ctx.clock())
    if part is None:
        return PartOutcome.SKIPPED
    run = _run(ctx, part.run_id)
    try:
        entry = ctx.catalog.get(run.policy)
    except NotFoundError:
        runs.finish_run(
            store,
            run.id,
            actor=ctx.actor,
            now=ctx.clock(),
            error=f"policy {run.policy} is no longer in the manifest",
        )
        return PartOutcome.DONE
    try:
        outcome = _chunk(ctx, entry, run, part, max_seconds or ctx.settings.retention_chunk_seconds)
    except LeaseHeldError:
        return PartOutcome.SKIPPED
    except TerminalError as exc:
        runs.fail_part(store, part.id, str(exc), ctx.clock())
        runs.finish_run(store, run.id, actor=ctx.actor, now=ctx.clock(), error=str(exc))
        raise
    except ComplianceError as exc:
        runs.fail_part(store, part.id, str(exc), ctx.clock())
        raise
    if outcome != PartOutcome.MORE:
        runs.finish_run(store, run.id, actor=ctx.actor, now=ctx.clock())
    return outcome


def _run(ctx: SweepContext, run_id: int) -> RetentionRun:
    with ctx.db.session() as session:
        return session.get_one(RetentionRun, run_id)


def _chunk(
    ctx: SweepContext, entry: Entry, run: RetentionRun, part: RetentionPart, seconds: float
) -> PartOutcome:
    cursor = runs.unseal_cursor(ctx.keyring, part)
    view = HoldView.load(ctx.db, ctx.sources, ctx.clock())
    deadline = time.monotonic() + seconds
    while True:
        budget = _budget(ctx, run)
        if budget is None:
            _save(ctx, part, cursor, {}, runs.STOPPED, keep=False)
            return PartOutcome.STOPPED
        step_seconds = min(SAVE_EVERY_SECONDS, max(0.1, deadline - time.monotonic()), budget[1])
        if entry.policy.kind == PolicyKind.SUBJECTS:
            result = _subjects(ctx, entry, run, cursor, view, step_seconds)
        else:
            limits = Limits(
                batch_size=ctx.settings.retention_batch_size,
                max_items=budget[0],
                max_batches=SAVE_EVERY_BATCHES,
                max_seconds=step_seconds,
                pause_seconds=ctx.settings.retention_pause_ms / 1000,
            )
            result = entry.source.purge(
                entry.policy, run.cutoff, cursor, limits, view.held(entry.policy)
            )
        cursor = dict(result.cursor)
        status = runs.DONE if result.done else runs.RUNNING
        more = not result.done and time.monotonic() < deadline
        _save(ctx, part, cursor, _counts(result), status, keep=more)
        metrics.rows_purged(run.policy, result.deleted)
        runs.renew_lease(ctx.store, run.policy, run.id, ctx.clock())
        if result.done:
            return PartOutcome.DONE
        if not more:
            return PartOutcome.MORE


def _budget(ctx: SweepContext, run: RetentionRun) -> tuple[int | None, float] | None:
    """(items, seconds) this run may still do; None when a bound is reached."""
    elapsed = (ctx.clock() - run.started_at).total_seconds()
    seconds = ctx.settings.retention_max_seconds - elapsed
    if seconds <= 0:
        return None
    if not ctx.settings.retention_max_items:
        return None, seconds
    with ctx.db.session() as session:
        done = sum(
            int((p.counts or {}).get("deleted", 0)) + int((p.counts or {}).get("dispatched", 0))
            for p in session.scalars(select(RetentionPart).where(RetentionPart.run_id == run.id))
        )
    left = ctx.settings.retention_max_items - done
    return None if left <= 0 else (left, seconds)


def _save(
    ctx: SweepContext,
    part: RetentionPart,
    cursor: Mapping[str, Any],
    add: Mapping[str, Any],
    status: str,
    *,
    keep: bool,
) -> None:
    runs.save_part(
        ctx.store,
        part,
        owner=ctx.owner,
        cursor=cursor,
        add=add,
        status=status,
        now=ctx.clock(),
        keep_lease=keep,
    )


def _counts(result: PurgeResult) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "deleted": result.deleted,
        "held": result.held,
        "changed": result.changed,
        "batches": result.batches,
        "detached": result.detached,
        "dropped": result.dropped,
        "dispatched": result.dispatched,
        "in_progress": result.in_progress,
    }
    if result.batch_ms:
        counts["max_batch_ms"] = round(max(result.batch_ms), 1)
        counts["batch_ms"] = [round(ms, 1) for ms in result.batch_ms]
    return counts


# --- subjects ----------------------------------------------------------------------


def _subjects(
    ctx: SweepContext,
    entry: Entry,
    run: RetentionRun,
    cursor: Mapping[str, Any],
    view: HoldView,
    seconds: float,
) -> PurgeResult:
    """Hand due subjects to the erasure cascade: one pre-approved erasure request each."""
    policy = entry.policy
    due = entry.source.due_subjects  # type: ignore[attr-defined]
    held = view.held(policy)
    if held.whole:
        found = entry.source.retention_plan(policy, run.cutoff, held)
        return PurgeResult(True, dict(cursor), held=found.held)
    counts = {"dispatched": 0, "held": 0, "in_progress": 0}
    started = time.monotonic()
    while True:
        batch = due(policy, run.cutoff, cursor, ctx.settings.retention_subject_batch)
        for identities in batch.subjects:
            counts[_hand_over(ctx, entry, identities, view)] += 1
        cursor = batch.cursor
        if batch.done or time.monotonic() - started >= seconds:
            break
    return PurgeResult(
        batch.done,
        dict(cursor),
        held=counts["held"],
        dispatched=counts["dispatched"],
        in_progress=counts["in_progress"],
    )


def _hand_over(ctx: SweepContext, entry: Entry, identities: Identities, view: HoldView) -> str:
    key = ctx.keyring.pseudonym_key
    pseudonyms = {pseudonym(key, i) for i in identities}
    if view.holds_subject(entry.policy, pseudonyms):
        return "held"
    subject = subject_pseudonym(key, identities)
    if _open_erasure(ctx.db, subject):
        return "in_progress"
    submission = Submission(
        kind=RequestKind.ERASURE,
        identities=identities,
        note=f"retention policy {entry.policy.name}",
        origin=f"retention:{entry.policy.name}",
        pre_approved=True,
        notify=entry.policy.notify or ctx.settings.retention_notify,
    )
    submit(
        ctx.db,
        ctx.settings,
        ctx.keyring,
        submission,
        sources=ctx.sources,
        operator=ctx.actor,
        now=ctx.clock(),
        dispatcher=ctx.requests,
    )
    return "dispatched"


def _open_erasure(db: Database, subject: str) -> bool:
    with db.session() as session:
        found = session.scalar(
            select(DsrRequest.id)
            .where(
                DsrRequest.subject == subject,
                DsrRequest.kind == RequestKind.ERASURE,
                DsrRequest.status.in_([s.value for s in OPEN]),
                DsrRequest.dry_run.is_(False),
            )
            .limit(1)
        )
    return found is not None


# --- in this process ---------------------------------------------------------------


def run_inline(
    ctx: SweepContext,
    name: str,
    *,
    trigger: str = "cli",
    progress: Callable[[RetentionRun, Mapping[str, Any]], None] | None = None,
) -> RetentionRun:
    """Start (or resume) a run and work every part to its end here, the parts of a big
    table side by side (one thread each); the final record."""
    started = start(ctx, name, trigger=trigger)
    lock = threading.Lock()

    def drive(part_id: int) -> None:
        while work_part(ctx, part_id) == PartOutcome.MORE:
            if progress is not None:
                with lock:
                    progress(started.run, _totals(ctx, started.run.id))

    if len(started.parts) > 1:
        with ThreadPoolExecutor(len(started.parts), thread_name_prefix="retention") as pool:
            list(pool.map(drive, started.parts))
    else:
        for part_id in started.parts:
            drive(part_id)
    runs.finish_run(ctx.store, started.run.id, actor=ctx.actor, now=ctx.clock())
    return _run(ctx, started.run.id)


def _totals(ctx: SweepContext, run_id: int) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for part in runs.parts_of(ctx.store, run_id):
        totals = runs.merge_counts(totals, part.counts or {})
    return totals


# --- recovery ----------------------------------------------------------------------


def lost_parts(
    store: runs.Store, dispatcher: PartDispatcher, now: datetime, idle_seconds: int
) -> list[int]:
    """Re-dispatch parts nobody works (a killed worker, a lost message); their chunks
    resume from the part's cursor."""
    found = runs.open_parts(store, now, idle_seconds)
    for part_id in found:
        try:
            dispatcher.dispatch_retention_part(part_id)
        except Exception as exc:  # broker trouble: the next sweep tries again
            log.warning(
                "retention.dispatch.deferred", extra={"part": part_id, "error": type(exc).__name__}
            )
    return found
