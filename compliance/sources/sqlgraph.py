"""The reference graph of one SQL source: which tables hold a subject's rows, and in
which order erasure may touch them.

Tables come from the manifest; references from the live schema's foreign keys and from
the manifest (many schemas have no FK constraints). Each reference has a kind, after
Meta's DELF:

- ``owned``: rows of the child that point at a subject's row are the subject's too, and
  go with it (``orders.user_id -> users``). The default for a reflected foreign key.
- ``shared``: the parent is shared (``users.address_id -> addresses``): a subject's
  reference makes the parent a candidate, erased only if nothing else still uses it.
- ``link``: never followed (``order_items.product_id -> products``, or a self-reference
  like ``users.referred_by``, its default). When the row it points at is deleted, the
  reference is detached (set to NULL) first.

Everything is checked when the graph is built, so a mistake in the manifest is a
`ManifestError` naming its entry, never a surprise half-way through an erasure.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import Column, MetaData, String, Table

from compliance.errors import ManifestError
from compliance.sources.base import Art15, Disposition

HMAC_LENGTH = 32
REDACTED = "[redacted]"


class EdgeKind(StrEnum):
    OWNED = "owned"
    SHARED = "shared"
    LINK = "link"


class Strategy(StrEnum):
    """How one column is anonymised."""

    NULL = "null"
    REDACT = "redact"  # a fixed marker, REDACTED
    HMAC = "hmac"  # 32 hex chars of HMAC-SHA256(pseudonym key, value): joinable, not reversible


@dataclass(frozen=True)
class IdentityColumn:
    column: str
    type: str  # an identity type: email, user_id, ..., custom:<name>
    resolve: bool = True  # rows matched by identity yield this column as a new identity
    lower: bool = False  # compare lower(column): emails stored with capitals still match


@dataclass(frozen=True)
class Reference:
    """A reference as written in the manifest (child side is the table it sits in)."""

    columns: tuple[str, ...]
    table: str
    to: tuple[str, ...]  # empty: the referenced table's primary key
    kind: EdgeKind
    entry: str  # manifest path, for errors


@dataclass(frozen=True)
class TableRule:
    """One registered table, as the manifest describes it."""

    name: str
    entry: str
    identities: tuple[IdentityColumn, ...] = ()
    on_erase: Disposition = Disposition.DELETE
    anonymize: tuple[tuple[str, Strategy], ...] = ()
    legal_basis: str = ""  # required for `retain`
    art15: Art15 = field(default_factory=Art15)
    export_exclude: tuple[str, ...] = ()
    key: tuple[str, ...] = ()  # declared row key, for tables without a primary key
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True)
class Edge:
    """A reference from `child`'s columns to `parent`'s columns."""

    child: str
    child_cols: tuple[str, ...]
    parent: str
    parent_cols: tuple[str, ...]
    kind: EdgeKind
    nullable: bool  # every child column accepts NULL (so it can be detached)

    def __str__(self) -> str:
        return f"{self.child}({', '.join(self.child_cols)}) -> {self.parent}"


@dataclass(frozen=True)
class Graph:
    """Registered tables, the references between them, and the erase order."""

    tables: Mapping[str, Table]  # registered table name -> reflected table
    schema_tables: Mapping[str, Table]  # every reflected table of the schema, by name
    rules: Mapping[str, TableRule]
    keys: Mapping[str, tuple[str, ...]]  # row key per registered table
    edges: tuple[Edge, ...]  # between registered tables
    foreign: tuple[Edge, ...]  # reflected FKs from unregistered tables into registered ones
    reachable: frozenset[str]  # tables that can hold a subject's rows
    order: tuple[str, ...]  # reachable tables, children before parents
    dialect: str = ""  # the database's SQLAlchemy dialect name

    def incoming(self, table: str) -> list[Edge]:
        return [e for e in self.edges if e.parent == table]

    def owned_parents(self, table: str) -> list[Edge]:
        return [
            e
            for e in self.edges
            if e.child == table and e.kind == EdgeKind.OWNED and e.parent in self.reachable
        ]

    def shared_from(self, table: str) -> list[Edge]:
        """Shared references pointing at `table` from tables holding subject rows."""
        return [
            e
            for e in self.edges
            if e.parent == table and e.kind == EdgeKind.SHARED and e.child in self.reachable
        ]

    def detach_edges(self, table: str) -> list[Edge]:
        """References into `table` to set to NULL before its rows are deleted: all but
        owned ones from tables whose rows were deleted first, and NOT NULL shared ones
        (a shared row is only deleted when nothing points at it any more)."""
        return [e for e in self.incoming(table) if self._detaches(e)]

    def _detaches(self, e: Edge) -> bool:
        if e.kind == EdgeKind.OWNED:
            return self.rules[e.child].on_erase != Disposition.DELETE
        return e.nullable or e.kind == EdgeKind.LINK


def build_graph(
    rules: Iterable[TableRule],
    metadata: MetaData,
    schema: str | None,
    entry: str,
    dialect: str = "",
) -> Graph:
    """Check the rules against the reflected schema and build the graph."""
    rule_map = {rule.name: rule for rule in rules}
    tables = {name: _table(metadata, schema, rule) for name, rule in rule_map.items()}
    for rule in rule_map.values():
        _check_rule(rule, tables[rule.name])
    keys = {name: _key(rule_map[name], table) for name, table in tables.items()}
    edges = _edges(rule_map, tables, metadata, schema)
    foreign = _foreign_edges(tables, metadata)
    reachable = _reachable(rule_map, edges)
    order = _erase_order(reachable, edges, entry)
    everything = {t.name: t for t in metadata.tables.values() if t.schema == schema}
    graph = Graph(
        tables, everything, rule_map, keys, tuple(edges), foreign, reachable, order, dialect
    )
    _check_detachable(graph)
    return graph


def _table(metadata: MetaData, schema: str | None, rule: TableRule) -> Table:
    full = f"{schema}.{rule.name}" if schema else rule.name
    if full not in metadata.tables:
        where = f" in schema {schema!r}" if schema else ""
        raise ManifestError(f"{rule.entry}: no table {rule.name!r}{where} in the database")
    return metadata.tables[full]


def _column(table: Table, name: str, entry: str) -> Column[object]:
    if name not in table.c:
        raise ManifestError(f"{entry}: table {table.name!r} has no column {name!r}")
    return table.c[name]


def _check_rule(rule: TableRule, table: Table) -> None:
    for ident in rule.identities:
        _column(table, ident.column, f"{rule.entry}.identities")
    for name in rule.export_exclude:
        _column(table, name, f"{rule.entry}.export_exclude")
    if rule.on_erase == Disposition.RETAIN and not rule.legal_basis:
        raise ManifestError(f"{rule.entry}: on_erase = 'retain' needs a legal_basis")
    if rule.on_erase == Disposition.ANONYMIZE and not rule.anonymize:
        raise ManifestError(f"{rule.entry}: on_erase = 'anonymize' needs an anonymize table")
    if rule.anonymize and rule.on_erase != Disposition.ANONYMIZE:
        raise ManifestError(f"{rule.entry}: 'anonymize' is set but on_erase is not 'anonymize'")
    for name, strategy in rule.anonymize:
        _check_strategy(table, name, strategy, f"{rule.entry}.anonymize.{name}")


def _check_strategy(table: Table, name: str, strategy: Strategy, entry: str) -> None:
    column = _column(table, name, entry)
    if column.primary_key:
        raise ManifestError(f"{entry}: a primary key column cannot be anonymised")
    if strategy == Strategy.NULL and not column.nullable:
        raise ManifestError(f"{entry}: column is NOT NULL; use 'redact' or 'hmac' instead")
    if strategy in (Strategy.REDACT, Strategy.HMAC):
        if not isinstance(column.type, String):
            raise ManifestError(f"{entry}: '{strategy}' needs a text column; use 'null'")
        need = HMAC_LENGTH if strategy == Strategy.HMAC else len(REDACTED)
        length = column.type.length
        if length is not None and length < need:
            raise ManifestError(f"{entry}: '{strategy}' needs room for {need} characters")


def _key(rule: TableRule, table: Table) -> tuple[str, ...]:
    if rule.key:
        for name in rule.key:
            _column(table, name, f"{rule.entry}.key")
        return rule.key
    key = tuple(c.name for c in table.primary_key.columns)
    if not key:
        raise ManifestError(
            f'{rule.entry}: table has no primary key; declare key = ["col", ...] (unique)'
        )
    return key


def _edges(
    rules: Mapping[str, TableRule],
    tables: Mapping[str, Table],
    metadata: MetaData,
    schema: str | None,
) -> list[Edge]:
    found: dict[tuple[str, tuple[str, ...], str], Edge] = {}
    for name, table in tables.items():
        for fk in table.foreign_key_constraints:
            parent = fk.referred_table.name
            if parent not in tables:
                continue  # a registered table pointing outside: never followed
            cols = tuple(c.name for c in fk.columns)
            kind = EdgeKind.LINK if parent == name else EdgeKind.OWNED
            found[(name, cols, parent)] = _edge(
                table, cols, parent, tuple(e.column.name for e in fk.elements), kind
            )
    for name, rule in rules.items():
        for ref in rule.references:
            edge = _declared_edge(tables[name], ref, tables, metadata, schema)
            if edge is not None:
                found[(name, edge.child_cols, edge.parent)] = edge
    return sorted(found.values(), key=lambda e: (e.child, e.child_cols, e.parent))


def _edge(
    table: Table, cols: tuple[str, ...], parent: str, to: tuple[str, ...], kind: EdgeKind
) -> Edge:
    nullable = all(bool(table.c[c].nullable) for c in cols)
    return Edge(table.name, cols, parent, to, kind, nullable)


def _declared_edge(
    table: Table,
    ref: Reference,
    tables: Mapping[str, Table],
    metadata: MetaData,
    schema: str | None,
) -> Edge | None:
    for name in ref.columns:
        _column(table, name, ref.entry)
    full = f"{schema}.{ref.table}" if schema else ref.table
    target = tables[ref.table] if ref.table in tables else metadata.tables.get(full)
    if target is None:
        raise ManifestError(f"{ref.entry}: references table {ref.table!r}, which does not exist")
    to = ref.to or tuple(c.name for c in target.primary_key.columns)
    for name in to:
        _column(target, name, ref.entry)
    if len(to) != len(ref.columns):
        raise ManifestError(
            f"{ref.entry}: {len(ref.columns)} column(s) cannot reference {len(to)} column(s)"
        )
    if ref.table not in tables:
        if ref.kind != EdgeKind.LINK:
            raise ManifestError(
                f"{ref.entry}: table {ref.table!r} is not in the manifest; register it, "
                "or declare the reference kind = 'link'"
            )
        return None  # a link to an unregistered table (a catalogue): nothing to do
    return _edge(table, ref.columns, ref.table, to, ref.kind)


def _foreign_edges(tables: Mapping[str, Table], metadata: MetaData) -> tuple[Edge, ...]:
    registered = set(tables.values())
    found = []
    for table in metadata.tables.values():
        if table in registered:
            continue
        for fk in table.foreign_key_constraints:
            if fk.referred_table in registered:
                cols = tuple(c.name for c in fk.columns)
                to = tuple(e.column.name for e in fk.elements)
                found.append(_edge(table, cols, fk.referred_table.name, to, EdgeKind.LINK))
    return tuple(found)


def _reachable(rules: Mapping[str, TableRule], edges: list[Edge]) -> frozenset[str]:
    """Tables with identity columns, and what owned (down) and shared (up) edges reach."""
    seen = {name for name, rule in rules.items() if rule.identities}
    changed = True
    while changed:
        changed = False
        for e in edges:
            if e.kind == EdgeKind.OWNED and e.parent in seen and e.child not in seen:
                seen.add(e.child)
                changed = True
            if e.kind == EdgeKind.SHARED and e.child in seen and e.parent not in seen:
                seen.add(e.parent)
                changed = True
    return frozenset(seen)


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


def _check_detachable(graph: Graph) -> None:
    for table in graph.reachable:
        if graph.rules[table].on_erase != Disposition.DELETE:
            continue
        for e in graph.detach_edges(table):
            if not e.nullable:
                raise ManifestError(
                    f"{graph.rules[e.child].entry}: {e} is NOT NULL, but erasure deletes "
                    f"{e.parent} rows and must first detach what still points at them; "
                    "make the column nullable, delete this table's rows too, or retain the parent"
                )
