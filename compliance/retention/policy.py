"""The vocabulary of retention: policies, what a sweep may do per call, and what it did.

A connector that enforces retention implements `Retaining` beside `DataSource`. The
sweep (`compliance.retention.sweep`) owns leases, run records, the cutoff and the clock;
a connector only counts, deletes and reports, one bounded call at a time, and returns a
cursor from which the next call continues. Nothing here carries personal data: cursors
hold keys of rows (integers, timestamps) or positions, never identity values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from compliance.identities import Identities


class PolicyKind(StrEnum):
    ROWS = "rows"  # rows of a SQL table older than N days are deleted (a partitioned
    # table: whole partitions past the cutoff are detached, then dropped after grace_days)
    SUBJECTS = "subjects"  # subjects (accounts) past N days go through the erasure cascade
    OBJECTS = "objects"  # objects under a prefix older than N days (every version)
    KEYS = "keys"  # Redis keys of a pattern idle longer than N days; keys without TTL get one


@dataclass(frozen=True)
class Policy:
    """One retention rule of one source, as the manifest declares it."""

    name: str  # unique across the registry: "shop.sessions", "shop.users.closed_at"
    source: str
    kind: PolicyKind
    days: int
    location: str  # the table, prefix or key pattern it governs (a name, never a value)
    column: str = ""  # the timestamp column (SQL), "" for objects and keys
    where: tuple[tuple[str, str, Any], ...] = ()  # (column, operator, value), AND-ed
    entry: str = ""  # manifest path, for errors
    grace_days: int = 0  # partitions: detached this long before they are dropped
    notify: bool = False  # subjects: email the subject their erasure receipt

    def cutoff(self, now: datetime) -> datetime:
        """Everything older than this is due."""
        return now - timedelta(days=self.days)

    def describe(self) -> str:
        """One line for plans and reports, e.g. "rows of sessions, created_at > 30 days"."""
        what = {
            PolicyKind.ROWS: f"rows of {self.location}",
            PolicyKind.SUBJECTS: f"subjects of {self.location}",
            PolicyKind.OBJECTS: f"objects under {self.location}",
            PolicyKind.KEYS: f"keys {self.location}",
        }[self.kind]
        age = f"{self.column} older than" if self.column else "older than"
        return f"{what}, {age} {self.days} days"


@dataclass(frozen=True)
class Limits:
    """How much one call may do; the sweep splits a run into calls."""

    batch_size: int = 20_000  # rows (or keys, objects) per batch: one short transaction each
    max_items: int | None = None  # stop after this many items in this call (None: no limit)
    max_seconds: float | None = None  # stop after this long (None: no limit)
    pause_seconds: float = 0.0  # sleep between batches (spares a busy database)
    max_batches: int | None = None  # stop after this many batches (the caller saves then)


@dataclass(frozen=True)
class Held:
    """What legal holds keep out of this policy's reach, as the sweep resolved them.

    `identities` are the held subjects' identities recovered at the sources from the
    holds' pseudonyms (in memory only); a connector excludes whatever belongs to them.
    `whole` is True when a hold covers the policy's entire source or location.
    """

    identities: Identities = field(default_factory=lambda: Identities.of(()))
    whole: bool = False
    basis: str = ""  # the legal basis of the hold(s), for plans and reports

    @property
    def any(self) -> bool:
        return self.whole or bool(self.identities)


@dataclass(frozen=True)
class Batch:
    """One batch a plan would run: its key range and how many items it holds."""

    low: Any
    high: Any
    items: int


@dataclass(frozen=True)
class PolicyPlan:
    """What a sweep would do now (counts only)."""

    policy: str
    cutoff: datetime
    due: int  # items past the cutoff that would go (held ones excluded)
    held: int  # items past the cutoff kept because of a legal hold
    batches: Sequence[Batch] = ()
    note: str = ""  # e.g. "3 partitions would be detached"


@dataclass(frozen=True)
class PurgeResult:
    """One call's work. `done` False: call again with `cursor`."""

    done: bool
    cursor: Mapping[str, Any]
    deleted: int = 0  # rows/objects/keys removed (or detached/dropped partition rows)
    held: int = 0  # due items skipped because of a legal hold
    changed: int = 0  # items changed rather than removed (a TTL set on a Redis key)
    batches: int = 0
    batch_ms: Sequence[float] = ()  # duration of each batch transaction, milliseconds
    detached: int = 0  # rows in partitions detached (dropped after the grace period)
    dropped: int = 0  # rows in detached partitions dropped once their grace period ended
    dispatched: int = 0  # subjects handed to the erasure cascade (subject policies)
    in_progress: int = 0  # due subjects already being erased (an open erasure request)


@dataclass(frozen=True)
class Status:
    """Where a policy stands now: the evidence for `gdpr retention report`."""

    policy: str
    limit_days: int
    oldest: datetime | None  # the oldest item still present (None: nothing there)
    overdue: int  # items past the limit still present (held ones included)
    held: int = 0  # of which kept by a legal hold


@dataclass(frozen=True)
class SubjectBatch:
    """Due subjects from one call of `due_subjects`: identities built from their rows."""

    subjects: Sequence[Identities]
    cursor: Mapping[str, Any]
    done: bool


Clock = Callable[[], datetime]


@runtime_checkable
class Retaining(Protocol):
    """What a connector that enforces retention implements (besides `DataSource`)."""

    name: str

    def retention_policies(self) -> tuple[Policy, ...]:
        """The policies this source's manifest entry declares (validated at load)."""
        ...

    def retention_plan(self, policy: Policy, cutoff: datetime, held: Held) -> PolicyPlan:
        """What a sweep at `cutoff` would remove; writes nothing."""
        ...

    def purge(
        self,
        policy: Policy,
        cutoff: datetime,
        cursor: Mapping[str, Any],
        limits: Limits,
        held: Held,
    ) -> PurgeResult:
        """Remove what is past `cutoff` and not held, from `cursor` ({} at first), within
        `limits`. Idempotent: a call repeated after a crash removes nothing twice."""
        ...

    def retention_status(self, policy: Policy, now: datetime, held: Held) -> Status:
        """The oldest item still present, and how many are past the policy's limit."""
        ...
