"""The reference graph of one SQL source: which tables hold a subject's rows, and in
which order erasure may touch them.

Tables come from the manifest; references from the live schema's foreign keys and from
the manifest (many schemas have no FK constraints); their kinds (``owned``, ``shared``,
``link``) are described in `manifest`, and what they mean for whose row is whose in
OWNERSHIP.md. Everything is checked when the graph is built (see `schema` and
`ownership`), so a mistake in the manifest is a `ManifestError` naming its entry, never
a surprise half-way through an erasure; every mistake is reported at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection, Engine, MetaData, Table

from compliance.errors import ManifestError
from compliance.sources.base import Disposition
from compliance.sources.sql.manifest import Edge, EdgeKind, ParentErase, TableRule
from compliance.sources.sql.ownership import (
    KEEPING,
    Ways,
    check_ways,
    find_ways,
    owning_tables,
    reachable_tables,
)
from compliance.sources.sql.policies import TableFacts, check_retention
from compliance.sources.sql.schema import (
    Problems,
    check_rule,
    foreign_edges,
    read_edges,
    row_key,
    table_of,
)


@dataclass(frozen=True)
class Graph:
    """Registered tables, the references between them, and the erase order."""

    tables: Mapping[str, Table]  # registered table name -> reflected table
    schema_tables: Mapping[str, Table]  # every reflected table of the schema, by name
    rules: Mapping[str, TableRule]
    keys: Mapping[str, tuple[str, ...]]  # row key per registered table
    edges: tuple[Edge, ...]  # between registered tables
    foreign: tuple[Edge, ...]  # reflected FKs from unregistered tables into registered ones
    reachable: frozenset[str]  # tables that can hold a subject's rows (own or shared)
    order: tuple[str, ...]  # reachable tables, children before parents
    dialect: str = ""  # the database's SQLAlchemy dialect name
    owning: frozenset[str] = frozenset()  # tables whose rows can be a subject's own
    ways: Ways = field(default_factory=dict)  # reference -> what happens to rows that stay

    def incoming(self, table: str) -> list[Edge]:
        return [e for e in self.edges if e.parent == table]

    def goes_with_parent(self, e: Edge) -> bool:
        """Whether the rows pointing through `e` are deleted with the row they point at
        (owned children of a deleted table)."""
        return e.kind == EdgeKind.OWNED and self.deleted(e.child)

    def guards(self, table: str) -> list[Edge]:
        """The references (registered, then from tables outside the manifest) through
        which a row that stays keeps a row of `table` in use; owned children that go
        with their row do not count."""
        kept = [e for e in self.incoming(table) if not self.goes_with_parent(e)]
        return kept + [f for f in self.foreign if f.parent == table]

    def owned_parents(self, table: str) -> list[Edge]:
        """Owned references from `table` to tables that can hold the subject's rows (own,
        or shared rows erased because nothing else uses them)."""
        return [e for e in self.owners(table) if e.parent in self.reachable]

    def owners(self, table: str) -> list[Edge]:
        """Every owned reference from `table`: a row pointing through one is its parent's."""
        return [e for e in self.edges if e.child == table and e.kind == EdgeKind.OWNED]

    def shared_from(self, table: str) -> list[Edge]:
        """Shared references pointing at `table` from tables holding subject rows."""
        return [
            e
            for e in self.edges
            if e.parent == table and e.kind == EdgeKind.SHARED and e.child in self.reachable
        ]

    def way(self, e: Edge) -> ParentErase | None:
        """What happens to rows that stay and point through `e` at an erased row (None:
        no row that stays can point there)."""
        return self.ways.get(e)

    def keep_edges(self, table: str) -> list[Edge]:
        """References through which a row that stays keeps a row of `table` from deletion
        (anonymised or retained instead)."""
        return [e for e in self.incoming(table) if self.way(e) in KEEPING]

    def fix_edges(self, table: str) -> list[Edge]:
        """References into `table` to change before its rows are deleted: set to NULL,
        or repointed to the placeholder row (`way`)."""
        return [e for e in self.incoming(table) if self._fixes(e)]

    def _fixes(self, e: Edge) -> bool:
        way = self.way(e)
        if way in (ParentErase.DETACH, ParentErase.PLACEHOLDER):
            return True
        if e.kind == EdgeKind.OWNED:
            return False  # the subject's child rows went first
        return e.nullable  # rows of the subject that go later (link), or shared, detached

    def deleted(self, table: str) -> bool:
        rule = self.rules.get(table)
        return rule is not None and rule.on_erase == Disposition.DELETE


def build_graph(
    rules: Iterable[TableRule],
    metadata: MetaData,
    schema: str | None,
    entry: str,
    dialect: str = "",
) -> Graph:
    """Check the rules against the reflected schema and build the graph; every mistake
    is reported in one `ManifestError`, in manifest order."""
    problems = Problems()
    rule_map = {rule.name: rule for rule in rules}
    tables: dict[str, Table] = {}
    for name, rule in rule_map.items():
        table = problems.check(table_of, metadata, schema, rule)
        if table is not None:
            tables[name] = table
    problems.raise_any()
    keys: dict[str, tuple[str, ...]] = {}
    for name, table in tables.items():
        check_rule(rule_map[name], table, problems)
        key = problems.check(row_key, rule_map[name], table)
        keys[name] = key or ()
    source = entry.removeprefix("sources.")
    found = read_edges(rule_map, tables, metadata, schema, problems, source)
    problems.raise_any()
    owning = owning_tables(rule_map, found)
    reachable = reachable_tables(rule_map, found)
    order = _erase_order(reachable, found, entry)
    ways = find_ways(rule_map, found, owning)
    everything = {t.name: t for t in metadata.tables.values() if t.schema == schema}
    graph = Graph(
        tables,
        everything,
        rule_map,
        keys,
        tuple(found),
        foreign_edges(tables, metadata),
        reachable,
        order,
        dialect,
        owning,
        ways,
    )
    check_ways(graph.rules, graph.edges, ways, owning, problems)
    for name, table in tables.items():
        problems.errors.extend(
            check_retention(table, rule_map[name].retention, _facts(graph, name))
        )
    problems.raise_any()
    return graph


def _facts(graph: Graph, table: str) -> TableFacts:
    """What the retention checks need to know of `table`'s place in the graph."""
    incoming = [e for e in (*graph.edges, *graph.foreign) if e.parent == table]
    return TableFacts(
        legal_days=graph.rules[table].legal_retention_days,
        linked_from=()
        if table in graph.reachable  # the subject's rows, merely also linked to
        else tuple(
            sorted({e.child for e in incoming if e.kind == EdgeKind.LINK and e.child != table})
        ),
        referenced_by=tuple(sorted({e.child for e in incoming})),
        identities=any(c.resolve for c in graph.rules[table].identities),
        key=graph.keys.get(table, ()),
    )


def _erase_order(reachable: frozenset[str], edges: list[Edge], entry: str) -> tuple[str, ...]:
    """Children before parents along owned and shared edges; a cycle is refused."""
    after: dict[str, set[str]] = {name: set() for name in reachable}  # table -> must wait for
    cause: dict[tuple[str, str], Edge] = {}
    for e in edges:
        if e.kind == EdgeKind.LINK or e.child not in reachable or e.parent not in reachable:
            continue
        if e.child == e.parent:
            raise ManifestError(
                f"{entry}: {e} is a self-reference of kind '{e.kind}'; declare it kind = 'link'"
            )
        after[e.parent].add(e.child)
        cause[(e.parent, e.child)] = e
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(after):
        ready = sorted(t for t in after if t not in done and after[t] <= done)
        if not ready:
            cycle = _find_cycle({t: after[t] - done for t in after if t not in done})
            chain = "; ".join(str(cause[pair]) for pair in itertools.pairwise(cycle))
            raise ManifestError(
                f"{entry}: references form a cycle ({chain}); declare the back-reference "
                "kind = 'link' so it is detached (set to NULL) before the rows it points at"
            )
        order.extend(ready)
        done.update(ready)
    return tuple(order)


def _find_cycle(waits: Mapping[str, set[str]]) -> list[str]:
    """A cycle in the wait-for graph, as a closed path [a, b, ..., a]."""
    start = min(waits)
    path = [start]
    while True:
        nxt = min(waits[path[-1]])
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)


class SourceHandle(Protocol):
    """What reads and erasure need of a SQL source (`source.SqlSource` is one)."""

    name: str
    engine: Engine
    pseudonym_key: bytes

    @property
    def graph(self) -> Graph: ...

    def connect(self) -> AbstractContextManager[Connection]: ...

    def errors(self) -> AbstractContextManager[None]: ...
