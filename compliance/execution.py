"""What a worker needs to run one request, and the run's durable per-source steps.

A runner (`compliance.erasure.run_erasure`, `exporters.job.run_export`) receives a
`RunContext`, does its work source by source, and records progress in `dsr_step` rows
through the context's `StepLog`, so a killed worker resumes where it stopped: a step that
is `done` is never run again, and a step's `checkpoint` is where its next chunk starts.

The step log is the only code that reads or writes `dsr_step` during a run. It reads all
steps of the request once (the worker reads them in the claim's transaction), keeps
changes in memory, and writes them with the next `save`: in a transaction of its own, or
in the caller's transaction beside the change they describe (a chunk's checkpoint with
nothing else, an export's counts with its package row, a mail's step with the run's
final transition). A runner calls `save` wherever a checkpoint must be durable before its
next side effect; everything else (a step marked running, counts of an export still
streaming, a mail sent as the run's last side effect) rides along with the next save,
the next heartbeat (`beat`, at most every third of the lease) or the run's final
transition.

Audit events about a step (`note`: "the link was mailed") ride along the same way: they
are appended to the chain in the transaction that writes the step they describe, so the
trail and the steps never disagree, and a rolled-back save forgets both.

A checkpoint may hold the keys of the subject's rows (an e-mail address can be a primary
key): with a keyring, the log stores it sealed (``{"sealed": "<base64>"}``, bound to the
request, source and action; `Keyring.seal_local`, so a key rotation never strands a run
half-way) and opens it when it reads the step back; a checkpoint written plain, before,
is read as it is.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, event, insert, select, update
from sqlalchemy.orm import Session

from compliance import audit, metrics
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import LeaseHeldError
from compliance.identities import Identities
from compliance.keyring import Keyring
from compliance.models import DsrRequest, DsrStep, RequestStatus, StepStatus
from compliance.sources.base import DataSource

MAX_ERROR = 2000
SEALED = "sealed"  # the one key of a sealed checkpoint
_FIELDS = ("status", "counts", "checkpoint", "attempts", "error", "started_at", "finished_at")

# The step log's statements, built once (a run issues them over and over).
_STEPS = cast(Table, DsrStep.__table__)
_REQUESTS = cast(Table, DsrRequest.__table__)
_READ_STEPS = select(_STEPS).where(_STEPS.c.request_id == bindparam("request_id"))
_READ_STEPS_OF = select(_STEPS).where(
    _STEPS.c.request_id.in_(bindparam("request_ids", expanding=True))
)
_INSERT_STEPS = insert(_STEPS).returning(_STEPS.c.id, sort_by_parameter_order=True)
_UPDATE_STEP = (
    update(_STEPS)
    .where(_STEPS.c.id == bindparam("p_id"))
    .values({name: bindparam(f"p_{name}", type_=_STEPS.c[name].type) for name in _FIELDS})
)
_RENEW = (
    update(_REQUESTS)
    .where(_REQUESTS.c.id == bindparam("w_id"), _REQUESTS.c.status == RequestStatus.RUNNING.value)
    .values(
        updated_at=bindparam("p_now", type_=_REQUESTS.c.updated_at.type),
        lease_until=bindparam("p_lease", type_=_REQUESTS.c.lease_until.type),
    )
)
_RENEW_CLAIMED = _RENEW.where(_REQUESTS.c.attempts == bindparam("w_claim"))


@dataclass
class Step:
    """One `dsr_step` row as the run knows it; change it through the `StepLog`."""

    source: str
    action: str
    status: str = StepStatus.PENDING
    counts: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    id: int | None = None  # None until the row is written

    @property
    def done(self) -> bool:
        return self.status == StepStatus.DONE

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.action)

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}


class StepLog:
    """The steps of one run of one request: read once, written in few transactions.

    `claim` is the run's claim (``dsr_request.attempts``); every `save` renews the run's
    lease under it and raises `LeaseHeldError` when another run took the request over, so
    the step writes of a run that lost its claim are rolled back with that transaction.
    `actor` and `subject` sign the audit events noted on the run (`note`).
    """

    def __init__(
        self,
        db: Database,
        request_id: uuid.UUID,
        *,
        claim: int | None,
        clock: Callable[[], datetime],
        lease_seconds: float,
        actor: str = "worker",
        subject: str | None = None,
        keyring: Keyring | None = None,
        kind: str = "",
    ) -> None:
        self.db = db
        self.kind = kind  # the request's kind, for the step metrics
        self.keyring = keyring
        self.request_id = request_id
        self.claim = claim
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.actor = actor
        self.subject = subject
        self._steps: dict[tuple[str, str], Step] = {}
        self._loaded = False
        self._dirty: set[tuple[str, str]] = set()
        self._notes: list[audit.Pending] = []
        self._renewed = clock()  # the claim has just set the lease

    # --- reading ---------------------------------------------------------------------

    def load(self, session: Session, rows: Iterable[Row[Any]] | None = None) -> None:
        """Read the request's steps now, in `session` (else they are read on first use),
        or take `rows`: the request's `dsr_step` rows, read in `session` (`read_steps`)."""
        if rows is None:
            self._load(session)
        elif not self._loaded:
            self._apply(rows)

    def get(self, source: str, action: str, session: Session | None = None) -> Step:
        """The step (a new pending one, not yet written, if the request has none). The
        steps are read on first use, in `session` if one is open (SQLite lets one
        transaction write at a time)."""
        self._load(session)
        key = (source, action)
        if key not in self._steps:
            self._steps[key] = Step(source, action)
        return self._steps[key]

    def of(self, action: str) -> dict[str, Step]:
        """Per source, the steps of `action` that exist or were changed in this run."""
        self._load()
        return {
            step.source: step
            for step in self._steps.values()
            if step.action == action and (step.id is not None or step.key in self._dirty)
        }

    @property
    def pending(self) -> bool:
        """Whether some change (or noted event) is not saved yet."""
        return bool(self._dirty or self._notes)

    # --- changing (in memory until the next save) ------------------------------------

    def start(self, source: str, action: str) -> Step:
        """The step, marked running with one more attempt (unless it is done)."""
        step = self.get(source, action)
        if not step.done:
            step.status = StepStatus.RUNNING
            step.attempts += 1
            step.started_at = step.started_at or self.clock()
            step.finished_at = None
            step.error = None
            self._dirty.add(step.key)
        return step

    def update(
        self,
        step: Step,
        *,
        counts: Mapping[str, Any] | None = None,
        add_counts: Mapping[str, int] | None = None,
        checkpoint: Mapping[str, Any] | None = None,
        done: bool = False,
    ) -> Step:
        """Replace (`counts`) or add to (`add_counts`) the step's counts, set its
        checkpoint, mark it done."""
        if counts is not None:
            step.counts = dict(counts)
        if add_counts:
            merged = dict(step.counts)
            for name, value in add_counts.items():
                merged[name] = merged.get(name, 0) + value
            step.counts = merged
        if checkpoint is not None:
            step.checkpoint = dict(checkpoint)
        if done and not step.done:
            step.status = StepStatus.DONE
            step.finished_at = self.clock()
            metrics.step_done(self.kind, step.source, step.action, _seconds(step))
        elif done:
            step.finished_at = self.clock()
        self._dirty.add(step.key)
        return step

    def reopen(self, source: str, action: str) -> None:
        """Make a step run again from the start on the next attempt."""
        step = self.get(source, action)
        if step.id is None and step.key not in self._dirty:
            return
        step.status = StepStatus.PENDING
        step.checkpoint = {}
        step.finished_at = None
        self._dirty.add(step.key)

    def note(
        self,
        action: str,
        details: Mapping[str, Any],
        *,
        at: datetime | None = None,
        session: Session | None = None,
    ) -> None:
        """An audit event about a change of this run (the mail went out), appended to the
        chain with the next save, in the transaction that writes that change. Noted
        inside `session`'s transaction (whose changes it describes), it is forgotten
        with everything else if that transaction rolls back."""
        at = at or self.clock()
        self._notes.append(
            audit.Pending(self.actor, action, at, self.request_id, self.subject, dict(details))
        )
        if session is not None:
            self._forget_on_rollback(session)

    def take_notes(self, session: Session) -> list[audit.Pending]:
        """The events noted so far, for the caller to append in `session` (the run's final
        transition appends them with its own); forgotten if it rolls back."""
        notes, self._notes = self._notes, []
        if notes:
            self._forget_on_rollback(session)
        return notes

    # --- writing ---------------------------------------------------------------------

    def save(
        self, session: Session | None = None, *, renew: bool = True, notes: bool = True
    ) -> None:
        """Write every change so far, and (`renew`) renew the run's lease, in `session`
        (committed with it) or in a transaction of its own; then append the noted audit
        events (unless `notes` is False: the caller takes them with `take_notes`)."""
        if session is None:
            with self.db.session() as own:
                self.save(own, renew=renew, notes=notes)
            return
        self._write(session)
        if renew:
            self.renew(session)
        if notes:
            audit.append(session, self.take_notes(session))

    def fail(self, step: Step, error: str) -> None:
        """Record a step's failure now (with every change so far), unless this run lost
        its claim (`LeaseHeldError`: the run that took over owns the steps now)."""
        step.status = StepStatus.FAILED
        step.error = error[:MAX_ERROR]
        step.finished_at = self.clock()  # when it failed: the alerts count recent failures
        self._dirty.add(step.key)
        metrics.step_failed(self.kind, step.source, step.action)
        self.save()

    def beat(self) -> None:
        """For work that saves nothing for a while (an export streaming its package):
        call it as often as you like; at most once per third of the lease it saves the
        changes so far and renews the lease."""
        if (self.clock() - self._renewed).total_seconds() >= self.lease_seconds / 3:
            self.save()

    def renew(self, session: Session) -> None:
        """Renew the run's lease (`lease_seconds` from now): while it lives, no other run
        takes the request over and the sweep leaves it alone.

        Raises `LeaseHeldError` when this run no longer holds the claim (its lease expired
        and another run took over): the run must stop before doing more side effects.
        """
        now = self.clock()
        params = {
            "w_id": self.request_id,
            "p_now": now,
            "p_lease": now + timedelta(seconds=self.lease_seconds),
        }
        if self.claim is None:
            session.execute(_RENEW, params)
        elif _rowcount(session.execute(_RENEW_CLAIMED, {**params, "w_claim": self.claim})) == 0:
            raise LeaseHeldError(
                f"request {self.request_id} was handed to another run; this run stops here"
            )
        self._renewed = now

    # --- internals -------------------------------------------------------------------

    def _load(self, session: Session | None = None) -> None:
        if self._loaded:
            return
        if session is None:
            with self.db.session() as own:
                self._load(own)
            return
        self._apply(read_steps(session, self.request_id))

    def _apply(self, rows: Iterable[Row[Any]]) -> None:
        for row in rows:
            step = self._steps.setdefault((row.source, row.action), Step(row.source, row.action))
            step.id = row.id
            for name in _FIELDS:
                setattr(step, name, _copy(getattr(row, name)))
            step.checkpoint = self._open(step)
        self._loaded = True

    def _stored(self, step: Step) -> dict[str, Any]:
        """The step's values as written: its checkpoint sealed when there is a keyring."""
        values = step.values()
        if self.keyring is not None and step.checkpoint:
            plain = json.dumps(step.checkpoint, sort_keys=True).encode()
            sealed = self.keyring.seal_local(plain, self._aad(step))
            values["checkpoint"] = {SEALED: base64.b64encode(sealed).decode()}
        return values

    def _open(self, step: Step) -> dict[str, Any]:
        stored = step.checkpoint if isinstance(step.checkpoint, dict) else {}
        sealed = stored.get(SEALED) if len(stored) == 1 else None
        if sealed is None or self.keyring is None:
            return stored
        plain = self.keyring.open_local(base64.b64decode(sealed), self._aad(step))
        return dict(json.loads(plain))

    def _aad(self, step: Step) -> bytes:
        return f"dsr_step|{self.request_id}|{step.source}|{step.action}".encode()

    def _write(self, session: Session) -> None:
        if not self._dirty:
            return
        self._load(session)
        steps = [self._steps[key] for key in sorted(self._dirty)]
        changed = [
            {"p_id": s.id, **{f"p_{name}": value for name, value in self._stored(s).items()}}
            for s in steps
            if s.id is not None
        ]
        if changed:
            session.execute(_UPDATE_STEP, changed)
        new = [s for s in steps if s.id is None]
        if new:
            rows = [
                {
                    "request_id": self.request_id,
                    "source": s.source,
                    "action": s.action,
                    **self._stored(s),
                }
                for s in new
            ]
            ids = session.execute(_INSERT_STEPS, rows).scalars()
            for step, step_id in zip(new, ids, strict=True):
                step.id = step_id
        self._dirty.clear()
        self._forget_on_rollback(session)

    def _forget_on_rollback(self, session: Session) -> None:
        """If `session`'s transaction rolls back, what this run knows may be ahead of the
        database: forget it all and read it again on next use."""
        watched = session.info.setdefault("step_logs", set())
        if id(self) in watched:
            return
        watched.add(id(self))

        def forget(_session: Session, _previous: Any) -> None:
            for step in self._steps.values():
                for name, value in Step(step.source, step.action).values().items():
                    setattr(step, name, value)
                step.id = None
            self._dirty.clear()
            self._notes.clear()
            self._loaded = False

        event.listen(session, "after_soft_rollback", forget, once=True)


def read_steps(session: Session, request_id: uuid.UUID) -> list[Row[Any]]:
    """The request's `dsr_step` rows (for `StepLog.load`)."""
    return list(session.execute(_READ_STEPS, {"request_id": request_id}))


def read_steps_of(
    session: Session, request_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Row[Any]]]:
    """`read_steps` of several requests in one statement, by request."""
    found: dict[uuid.UUID, list[Row[Any]]] = {request_id: [] for request_id in request_ids}
    if request_ids:
        for row in session.execute(_READ_STEPS_OF, {"request_ids": list(request_ids)}):
            found[row.request_id].append(row)
    return found


def _seconds(step: Step) -> float:
    """From the step's first start to its end (0 when it never started)."""
    if step.started_at is None or step.finished_at is None:
        return 0.0
    return (step.finished_at - step.started_at).total_seconds()


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


@dataclass
class Prefetched:
    """What a coalesced batch found for a run before the run started
    (`compliance.coalesce`): the subject's identities, resolved with the batch's."""

    identities: Identities | None = None


@dataclass(frozen=True)
class RunContext:
    """Everything a runner may use; built by the worker, passed down explicitly.

    `steps` is this run's step log, made fresh for every context (a copy made with
    `dataclasses.replace` gets its own)."""

    settings: Settings
    db: Database
    keyring: Keyring
    sources: Sequence[DataSource]
    request_id: uuid.UUID
    subject: str  # pseudonym of the data subject
    identities: Identities  # the identities given at submission (decrypted)
    dry_run: bool = False
    clock: Callable[[], datetime] = utcnow
    actor: str = "worker"
    claim: int | None = None  # the attempt number this run claimed; heartbeats check it
    notify: bool = True  # email the subject (retention erasures: only if configured)
    kind: str = ""  # the request's kind (`RequestKind`), for the step metrics
    prefetched: Prefetched = field(default_factory=Prefetched, repr=False, compare=False)
    steps: StepLog = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        log = StepLog(
            self.db,
            self.request_id,
            claim=self.claim,
            clock=self.clock,
            lease_seconds=self.settings.lease_seconds,
            actor=self.actor,
            subject=self.subject,
            keyring=self.keyring,
            kind=self.kind,
        )
        object.__setattr__(self, "steps", log)


def saved_counts(steps: Iterable[Step]) -> dict[str, dict[str, Any]]:
    """Per source, a copy of the steps' counts."""
    return {step.source: dict(step.counts) for step in steps}
