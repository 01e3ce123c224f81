"""The suppression list, applied again: erased subjects a backup restore brought back.

A completed erasure leaves a `Suppression` row: the subject's pseudonym and the HMAC
pseudonyms of every identity erased (the raw values are wiped with the request). When a
source is restored from a backup taken before the erasure, the subject's rows are back.
`reapply` finds them the way legal holds find held subjects (`retention.held.recover`):
a source's `find_subjects(pseudonyms)` reads its identity columns and hashes each value,
returning the raw identities whose pseudonyms are on the list, in memory only. Each
subject found again gets a pre-approved erasure through `requests.submit` (the path a
retention policy's subject erasures take): the found identities sealed as usual, a note
that names no one, the erasure it repeats linked in the audit trail, and a receipt when
it completes, like any erasure.

Cost and memory: the list is read `batch` subjects at a time (in pseudonym order), and
for each batch every searching source scans each identity column once, streaming its
distinct values in bounded rounds (a pseudonym cannot be looked up by index: finding one
costs a scan). Memory holds one batch's pseudonyms and the identities found for it.

Safety: a subject whose identities found again lead to another identity of a type the
erasure recorded, under a value it did not record (a user id handed out again to someone
else), is reported as a conflict and not erased. An erasure of the subject that is still
open (queued, running, on hold, failed) is never submitted twice. Only sources that
implement `find_subjects` (the SQL connector) can be searched; the erasure then reaches
every source through the normal cascade.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, or_, select, text

from compliance import audit
from compliance.cascade import resolve
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import Dispatcher
from compliance.errors import StateError
from compliance.identities import Identities, Identity, pseudonym
from compliance.keyring import Keyring
from compliance.lifecycle import OPEN
from compliance.models import DsrRequest, RequestKind, Suppression
from compliance.requests import Submission, submit
from compliance.sources.base import DataSource

log = logging.getLogger("gdpr.suppression")

BATCH_SUBJECTS = 1000  # suppressed subjects searched for per scan of the sources
ORIGIN_PREFIX = "suppression:"  # + the subject's pseudonym: a reapplied erasure's origin
NOTE = "suppression reapply: erased before, found again after a restore"
_LOCK_KEY = 0x6764_7073  # PostgreSQL advisory lock: one reapply at a time


class Outcome(StrEnum):
    QUEUED = "queued"  # a new erasure was submitted
    OPEN = "open"  # an erasure of the subject is still open: nothing submitted
    CONFLICT = "conflict"  # the data found also names someone else: not erased
    DRY_RUN = "would_queue"  # --dry-run: an erasure would be submitted


@dataclass(frozen=True)
class ReapplyContext:
    """What a reapply needs: the control database, keys, sources and dispatcher."""

    settings: Settings
    db: Database
    keyring: Keyring
    sources: Sequence[DataSource]
    dispatcher: Dispatcher
    operator: str
    now: datetime
    ticket: str | None = None


@dataclass(frozen=True)
class Suppressed:
    """One row of the suppression list, detached from the session."""

    subject: str
    request_id: uuid.UUID  # the erasure that recorded (or last renewed) the row
    pseudonyms: frozenset[str]  # of every identity erased, and the subject's own
    types: frozenset[str]  # the identity types the erasure recorded


@dataclass(frozen=True)
class Found:
    """A suppressed subject found again, and what was done about it (no raw values)."""

    subject: str
    original_request_id: uuid.UUID
    sources: tuple[str, ...]  # where their identities turned up
    counts: dict[str, int]  # identities found again, per type
    outcome: Outcome
    request_id: uuid.UUID | None = None  # the erasure submitted, or the one still open

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "original_request_id": str(self.original_request_id),
            "sources": list(self.sources),
            "identities": dict(self.counts),
            "outcome": self.outcome.value,
            "request_id": str(self.request_id) if self.request_id else None,
        }


@dataclass(frozen=True)
class Reapply:
    """One pass over the suppression list."""

    checked: int  # suppressed subjects searched for
    searched: tuple[str, ...]  # sources that can find subjects by pseudonym
    found: tuple[Found, ...]
    dry_run: bool

    def count(self, outcome: Outcome) -> int:
        return sum(1 for f in self.found if f.outcome == outcome)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "searched": list(self.searched),
            "found": len(self.found),
            "dry_run": self.dry_run,
            **{o.value: self.count(o) for o in Outcome},
            "subjects": [f.to_dict() for f in self.found],
        }


def origin(subject: str) -> str:
    return ORIGIN_PREFIX + subject


def count(db: Database) -> int:
    """How many subjects the suppression list holds."""
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Suppression)) or 0)


def reapply(
    ctx: ReapplyContext,
    *,
    dry_run: bool = False,
    batch: int = BATCH_SUBJECTS,
    progress: Callable[[int], None] | None = None,
) -> Reapply:
    """Search the sources for every suppressed subject and erase again those found
    (`dry_run`: only report them). `progress` gets the number searched for so far."""
    searched = tuple(s.name for s in _searching(ctx.sources))
    checked, found = 0, []
    with _exclusive(ctx.db, skip=dry_run):
        for rows in _batches(ctx.db, batch):
            checked += len(rows)
            for row, where, identities in _found_again(ctx, rows):
                found.append(_handle(ctx, row, where, identities, dry_run))
            if progress is not None:
                progress(checked)
        result = Reapply(checked, searched, tuple(found), dry_run)
        _audit_run(ctx, result)
    return result


# --- finding ---------------------------------------------------------------------------


def _searching(sources: Sequence[DataSource]) -> list[DataSource]:
    """The sources that can find subjects by pseudonym (`find_subjects`)."""
    return [s for s in sources if callable(getattr(s, "find_subjects", None))]


def _batches(db: Database, size: int) -> Iterator[list[Suppressed]]:
    last: str | None = None
    while True:
        query = select(Suppression).order_by(Suppression.subject).limit(size)
        if last is not None:
            query = query.where(Suppression.subject > last)
        with db.session() as session:
            rows = [_detached(r) for r in session.scalars(query)]
        if not rows:
            return
        yield rows
        last = rows[-1].subject


def _detached(row: Suppression) -> Suppressed:
    hmacs = row.identity_hmacs or {}
    pseudonyms = {p for values in hmacs.values() for p in values} | {row.subject}
    return Suppressed(row.subject, row.request_id, frozenset(pseudonyms), frozenset(hmacs))


def _found_again(
    ctx: ReapplyContext, rows: Sequence[Suppressed]
) -> list[tuple[Suppressed, tuple[str, ...], Identities]]:
    """The subjects of `rows` some source holds again: where, and the identities found
    (those on the list only). One `find_subjects` call per source for the whole batch."""
    index: dict[str, list[Suppressed]] = {}
    for row in rows:
        for p in row.pseudonyms:
            index.setdefault(p, []).append(row)
    hits: dict[str, set[Identity]] = {}
    where: dict[str, dict[str, None]] = {}  # in the registry's order
    key = ctx.keyring.pseudonym_key
    for source in _searching(ctx.sources):
        for identity in source.find_subjects(frozenset(index)):  # type: ignore[attr-defined]
            for row in index.get(pseudonym(key, identity), ()):
                hits.setdefault(row.subject, set()).add(identity)
                where.setdefault(row.subject, {})[source.name] = None
    return [
        (row, tuple(where[row.subject]), Identities.of(hits[row.subject]))
        for row in rows
        if row.subject in hits
    ]


def _conflicts(ctx: ReapplyContext, row: Suppressed, identities: Identities) -> bool:
    """Whether the identities found lead to another value of a type the erasure
    recorded: the rows found may be someone else's (an id given out again)."""
    key = ctx.keyring.pseudonym_key
    linked = resolve(ctx.sources, identities)
    return any(i.type in row.types and pseudonym(key, i) not in row.pseudonyms for i in linked)


# --- erasing again ---------------------------------------------------------------------


def _handle(
    ctx: ReapplyContext,
    row: Suppressed,
    where: tuple[str, ...],
    identities: Identities,
    dry_run: bool,
) -> Found:
    counts = {t: len(identities.values(t)) for t in sorted(identities.types())}

    def found(outcome: Outcome, request_id: uuid.UUID | None = None) -> Found:
        return Found(row.subject, row.request_id, where, counts, outcome, request_id)

    if _conflicts(ctx, row, identities):
        log.warning("dsr.suppression.conflict", extra={"subject": row.subject})
        return found(Outcome.CONFLICT)
    still_open = _open_erasure(ctx.db, row)
    if still_open is not None:
        return found(Outcome.OPEN, still_open)
    if dry_run:
        return found(Outcome.DRY_RUN)
    request_id = _submit(ctx, row, identities)
    _audit_reapplied(ctx, row, where, identities, request_id)
    log.info("dsr.suppression.reapplied", extra={"request_id": str(request_id)})
    return found(Outcome.QUEUED, request_id)


def _open_erasure(db: Database, row: Suppressed) -> uuid.UUID | None:
    """An erasure of this subject that is not final yet: one reapply started, or one an
    operator submitted by any of the subject's identities."""
    with db.session() as session:
        return session.scalar(
            select(DsrRequest.id)
            .where(
                DsrRequest.kind == RequestKind.ERASURE.value,
                DsrRequest.status.in_([s.value for s in OPEN]),
                DsrRequest.dry_run.is_(False),
                or_(
                    DsrRequest.origin == origin(row.subject),
                    DsrRequest.subject.in_(sorted(row.pseudonyms)),
                ),
            )
            .order_by(DsrRequest.submitted_at)
            .limit(1)
        )


def _submit(ctx: ReapplyContext, row: Suppressed, identities: Identities) -> uuid.UUID:
    submission = Submission(
        kind=RequestKind.ERASURE,
        identities=identities,
        ticket=ctx.ticket,
        note=NOTE,
        origin=origin(row.subject),
        pre_approved=True,  # the erasure it repeats was approved
        notify=False,  # the subject was told of the erasure when it completed
    )
    request = submit(
        ctx.db,
        ctx.settings,
        ctx.keyring,
        submission,
        sources=ctx.sources,
        operator=ctx.operator,
        now=ctx.now,
        dispatcher=ctx.dispatcher,
    )
    return request.id


def _audit_reapplied(
    ctx: ReapplyContext,
    row: Suppressed,
    where: tuple[str, ...],
    identities: Identities,
    request_id: uuid.UUID,
) -> None:
    with ctx.db.session() as session:
        audit.record(
            session,
            actor=ctx.operator,
            action="suppression.reapply",
            now=ctx.now,
            request_id=request_id,
            subject=row.subject,
            details={
                "original_request_id": str(row.request_id),
                "sources": list(where),
                "identity_types": sorted(identities.types()),
            },
        )


def _audit_run(ctx: ReapplyContext, result: Reapply) -> None:
    details = {k: v for k, v in result.to_dict().items() if k != "subjects"}
    with ctx.db.session() as session:
        audit.record(
            session, actor=ctx.operator, action="suppression.checked", now=ctx.now, details=details
        )


@contextmanager
def _exclusive(db: Database, *, skip: bool) -> Iterator[None]:
    """One reapply at a time on PostgreSQL (a session advisory lock), so two runs never
    both find a subject without an open erasure and submit one each."""
    if skip or db.engine.dialect.name != "postgresql":
        yield
        return
    with db.engine.connect() as conn:
        taken = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
        conn.commit()  # the lock belongs to the session, not to this transaction
        if not taken:
            raise StateError(
                "another suppression reapply is running; wait for it to finish and run again"
            )
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
