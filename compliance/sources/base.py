"""The data-source protocol and the values that cross it.

A source is one system holding personal data (a SQL database, an object-store bucket,
a Redis keyspace, a third-party API). Every method is safe to call again: `erase` is
idempotent and resumable from the checkpoint it returned last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from compliance.identities import Identities


class Action(StrEnum):
    DISCOVER = "discover"
    EXPORT = "export"
    ERASE = "erase"
    VERIFY = "verify"


class Disposition(StrEnum):
    """What happens to data at a location when the subject is erased."""

    EXPORT = "export"
    DELETE = "delete"
    ANONYMIZE = "anonymize"
    RETAIN = "retain"
    DETACH = "detach"  # a reference to an erased row is set to NULL
    REPOINT = "repoint"  # a reference to an erased row now points at a placeholder row
    UNTOUCHED = "untouched"  # other people's rows: neither exported nor changed


class Scope(StrEnum):
    """Whose rows a planned location counts (see compliance/sources/sql/OWNERSHIP.md)."""

    SUBJECT = "subject"  # the subject's own rows: each counted once, in the plan's total
    SHARED = "shared"  # rows the subject shares with others (an address two customers use)
    OTHERS = "others"  # rows of other people: never exported, deleted or anonymised
    REFERENCE = "reference"  # references inside rows that stay (detail, not more rows)


@dataclass(frozen=True)
class Art15:
    """GDPR Art. 15 facts about a location, shown in the export's index.

    Empty means unknown, and the index leaves it out. A source's values apply to each of
    its tables (prefixes, key patterns) unless the table sets its own; a table's values
    never reach its siblings. A SQL table's `description` is its own: it is never taken
    from the source (see compliance/sources/README.md).
    """

    description: str = ""  # what the location holds, as its title ("Your orders")
    purpose: str = ""  # Art. 15(1)(a): why it is processed
    legal_basis: str = ""  # Art. 6 basis of the processing
    recipients: tuple[str, ...] | None = None  # Art. 15(1)(c); None: unknown, (): nobody
    retention: str = ""  # Art. 15(1)(d): how long it is kept
    origin: str = ""  # Art. 15(1)(g): where it came from, when not from the subject


@dataclass(frozen=True)
class LocationPlan:
    """What would happen at one location (table, prefix, key pattern, endpoint)."""

    location: str  # a name or template, never a subject's value
    disposition: Disposition
    count: int
    legal_basis: str = ""  # required when disposition is RETAIN
    scope: Scope = Scope.SUBJECT
    note: str = ""  # why, in a few words ("other people's rows refer to them")


@dataclass(frozen=True)
class SourcePlan:
    source: str
    kind: str
    locations: tuple[LocationPlan, ...] = ()

    @property
    def total(self) -> int:
        """The subject's rows (and items) this plan touches, each counted once."""
        return sum(loc.count for loc in self.locations if loc.scope == Scope.SUBJECT)


@dataclass(frozen=True)
class RowsItem:
    """The subject's rows from one collection (a table, a Redis key, an API resource)."""

    source: str
    collection: str
    rows: Iterable[Mapping[str, Any]]
    meta: Art15 = field(default_factory=Art15)
    shared: bool = False  # rows shared with other people (an address), not the subject's alone


@dataclass(frozen=True)
class FileItem:
    """One of the subject's files; `chunks()` streams its bytes."""

    source: str
    path: str  # relative path inside the source, e.g. "avatars/42/me.png"
    chunks: Callable[[], Iterator[bytes]]
    size: int | None = None
    meta: Art15 = field(default_factory=Art15)


ExportItem = RowsItem | FileItem


@dataclass(frozen=True)
class EraseResult:
    """One chunk of erasure. `done` False means: call again with `checkpoint`."""

    done: bool
    checkpoint: Mapping[str, Any] = field(default_factory=dict)
    deleted: int = 0
    anonymized: int = 0
    retained: int = 0
    detached: int = 0  # references in the subject's kept rows set to NULL or repointed
    others: int = 0  # rows of other people whose reference to an erased row changed
    # the checkpoint holds what the next chunks could not find again (the SQL cascade's
    # orphaned shared rows): saved before the next chunk runs, even if nothing changed
    keep: bool = False

    def then(self, later: EraseResult) -> EraseResult:
        """This chunk and `later`, run right after it from its checkpoint, as one chunk."""
        return EraseResult(
            done=later.done,
            checkpoint=later.checkpoint,
            deleted=self.deleted + later.deleted,
            anonymized=self.anonymized + later.anonymized,
            retained=self.retained + later.retained,
            detached=self.detached + later.detached,
            others=self.others + later.others,
            keep=self.keep or later.keep,
        )


@dataclass(frozen=True)
class Residue:
    """Personal data still present at one location after erasure (counts, no values)."""

    location: str
    count: int


@runtime_checkable
class DataSource(Protocol):
    """What every connector implements. Names are unique across the registry."""

    name: str
    kind: str

    def identity_types(self) -> frozenset[str]:
        """The identity types (email, user_id, custom:...) this source can look a subject
        up by, as the manifest declares them; reads nothing from the live system."""
        ...

    def resolve(self, identities: Identities) -> Identities:
        """Return `identities` plus any this source links to them (email -> user_id), to
        this source's own fixpoint: resolving the answer again adds nothing (the cascade
        asks a source again only when other sources added to its answer)."""
        ...

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        """Counts per location of what `action` would touch; writes nothing."""
        ...

    def export(self, identities: Identities) -> Iterator[ExportItem]:
        """Stream everything this source holds about the subject."""
        ...

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        """Erase one bounded chunk; idempotent; resume from `checkpoint` ({} at first)."""
        ...

    def verify(self, identities: Identities) -> list[Residue]:
        """What is still there for the subject after erasure (empty list: nothing)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class Describing(Protocol):
    """A source that says what its manifest declares for each location it plans (tables,
    prefixes, key patterns, endpoints): the Art. 15 facts `compliance.sources.art15`
    phrases for receipts and plans."""

    def location_facts(self) -> Mapping[str, Art15]:
        """Per location name, the facts that apply to it."""
        ...


@runtime_checkable
class Coalescing(Protocol):
    """A source that reads for many subjects at once (`compliance.coalesce`): a batch of
    exports resolves together, then reads together, then each export runs on its own."""

    def resolve_many(self, given: Sequence[Identities]) -> list[Identities | None]:
        """`resolve` for each subject; None for one this could not settle (it is then
        resolved alone, and refused there if it must be)."""
        ...

    def warm(self, subjects: Sequence[Identities]) -> None:
        """Read these subjects' export rows together; `export` of one of them uses them."""
        ...

    def cool(self) -> None:
        """Forget what `warm` read and no export used."""
        ...
