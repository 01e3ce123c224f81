"""SQL expressions over a source's graph: which rows of a table are the subject's.

`identity_match` is how a table's identity columns match the subject's identities, for
every read that starts from them. `Selector.where(table)` states the whole ownership
model as one boolean expression per table, built from bound parameters only: the
table's identity columns matched against the subject's identities, OR its owned
parents' subject rows, OR (during erasure) the shared rows found orphaned. A shared row
owned by somebody (B's card, which paid A's order) is never one of them: it is another
subject's row (OWNERSHIP.md). Retention uses it to keep held subjects' rows out of its
own statements; requests find the subject's rows once per table instead (`subject`).
An identity value that cannot be a value of the column (``x' OR 1=1 --`` for an integer
column, 10 KB for a ``varchar(255)``) is dropped before it reaches the database: it can
match nothing there anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    and_,
    exists,
    false,
    func,
    not_,
    or_,
    select,
    true,
)

from compliance.identities import Identities
from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import (
    Key,
    coerce_all,
    cols_expr,
    in_rows,
    key_columns,
    key_in,
    placeholder_key,
)
from compliance.sources.sql.manifest import Edge, ParentErase
from compliance.sources.sql.ownership import KEEPING


def identity_match(
    graph: Graph, table: str, identities: Identities, *, resolving: bool = False
) -> ColumnElement[bool] | None:
    """Rows of `table` whose identity columns hold one of `identities` (`resolving`:
    only the columns that link identities); None: no identity can match there."""
    lookups = identity_lookups(graph, table, identities, resolving=resolving)
    parts = [looked.in_(values) for looked, values in lookups]
    return or_(*parts) if parts else None


def identity_lookups(
    graph: Graph, table: str, identities: Identities, *, resolving: bool = False
) -> list[tuple[ColumnElement[Any], list[Any]]]:
    """What `identity_match` compares, per identity column that some identity can
    match: the column (or ``lower(column)``) and the values it must hold one of."""
    terms = identity_terms(graph, table, identities, resolving=resolving)
    return [(looked, values) for _, looked, values in terms]


def identity_terms(
    graph: Graph, table: str, identities: Identities, *, resolving: bool = False
) -> list[tuple[str, ColumnElement[Any], list[Any]]]:
    """`identity_lookups`, each with a label naming its identity column (the same for
    every subject: a batch merges the values of one label, `batch.split`)."""
    t = graph.tables[table]
    found: list[tuple[str, ColumnElement[Any], list[Any]]] = []
    for n, ident in enumerate(graph.rules[table].identities):
        if resolving and not ident.resolve:
            continue
        column = t.c[ident.column]
        values = coerce_all(column, identities.values(ident.type))
        if not values:
            continue
        if ident.lower:
            lowered = func.lower(column, type_=column.type)
            found.append((f"i{n}", lowered, [str(v).lower() for v in values]))
        else:
            found.append((f"i{n}", column, values))
    return found


def pointing(graph: Graph, e: Edge, parent: FromClause) -> tuple[FromClause, ColumnElement[bool]]:
    """An alias of `e`'s child, and the condition that its row points through `e` at the
    row of `parent` an enclosing statement is on (for a correlated ``EXISTS``)."""
    child = graph.schema_tables[e.child].alias()
    pairs = zip(e.child_cols, e.parent_cols, strict=True)
    return child, and_(*[child.c[c] == parent.c[p] for c, p in pairs])


def mine(selector: Selector, table: str) -> ColumnElement[bool] | None:
    """The subject's rows of `table` for an export: own rows, and rows of a shared table
    that only the subject's rows use."""
    own, candidates = selector.own(table), selector.candidates(table)
    alone = None if candidates is None else and_(candidates, selector.unreferenced(table))
    parts = [p for p in (own, alone) if p is not None]
    return or_(*parts) if parts else None


def shared_rows(selector: Selector, table: str) -> ColumnElement[bool] | None:
    """Rows the subject's rows point at that other people's rows use too, owned by nobody."""
    candidates = selector.candidates(table)
    if candidates is None:
        return None
    shared = and_(candidates, not_(selector.unreferenced(table)))
    own = selector.own(table)
    return shared if own is None else and_(shared, not_(own))


class Selector:
    """Builds the subject's row condition per table, for one set of identities.

    A table's *own* rows are those matching an identity column, owned by an own row of a
    parent, or (during erasure) shared rows found orphaned: `shared` maps table -> their
    keys. `candidates` are the shared rows own rows point at that nobody owns; ownership
    does not spread from those (another customer's order is not the subject's because it
    ships to an address they share).
    """

    def __init__(
        self,
        graph: Graph,
        identities: Identities,
        shared: Mapping[str, Sequence[Key]] | None = None,
    ) -> None:
        self.graph = graph
        self.identities = identities
        self.shared = shared or {}
        self._memo: dict[str, ColumnElement[bool] | None] = {}

    def where(self, table: str) -> ColumnElement[bool] | None:
        """The condition for the subject's rows of `table`; None: it has none."""
        return self.own(table)

    def rows(self, table: str) -> ColumnElement[bool]:
        """Like `where`, as an expression that matches nothing when there is nothing."""
        where = self.where(table)
        return false() if where is None else where

    def own(self, table: str) -> ColumnElement[bool] | None:
        """The subject's own rows of `table` (see the class docstring); None: none."""
        if table not in self._memo:
            self._memo[table] = self._own(table)
        return self._memo[table]

    def identity_match(self, table: str, *, resolving: bool = False) -> ColumnElement[bool] | None:
        """Rows whose identity columns hold one of the subject's identities."""
        return identity_match(self.graph, table, self.identities, resolving=resolving)

    def _own(self, table: str) -> ColumnElement[bool] | None:
        if table not in self.graph.reachable:
            return None
        t = self.graph.tables[table]
        parts = []
        match = self.identity_match(table)
        if match is not None:
            parts.append(match)
        for e in self.graph.owned_parents(table):
            parent = self.own(e.parent)
            if parent is not None:
                p = self.graph.tables[e.parent]
                parts.append(in_rows(t, e.child_cols, p, e.parent_cols, parent))
        if self.shared.get(table):
            keys = key_in(self.graph, table, self.shared[table])
            parts.append(and_(keys, self.unreferenced(table)))
        if not parts:
            return None
        found = or_(*parts)
        spare = placeholder_key(self.graph, table)
        if spare is not None:  # the placeholder row is nobody's
            found = and_(found, not_(key_in(self.graph, table, [spare])))
        return found

    def candidates(self, table: str) -> ColumnElement[bool] | None:
        """Rows of a shared table that the subject's own rows point at and nobody owns."""
        t = self.graph.tables[table]
        parts = []
        for e in self.graph.shared_from(table):
            child = self.own(e.child)
            if child is not None:
                c = self.graph.tables[e.child]
                parts.append(in_rows(t, e.parent_cols, c, e.child_cols, child))
        if not parts:
            return None
        owned = self.owned_by_anyone(table, t)
        return or_(*parts) if owned is None else and_(or_(*parts), not_(owned))

    def owned_by_anyone(self, table: str, rows: FromClause) -> ColumnElement[bool] | None:
        """Rows of `rows` with a live owner: an owned reference to a row that exists."""
        parts = []
        for e in self.graph.owners(table):
            parent = self.graph.tables[e.parent].alias()
            pairs = zip(e.child_cols, e.parent_cols, strict=True)
            parts.append(exists().where(and_(*[parent.c[p] == rows.c[c] for c, p in pairs])))
        return or_(*parts) if parts else None

    def unreferenced(self, table: str) -> ColumnElement[bool]:
        """Rows of `table` that nothing points at, once the subject's deleted rows are gone
        (owned children that go with the row do not count)."""
        plain = Selector(self.graph, self.identities)
        t = self.graph.tables[table]
        parts = []
        for e in self.graph.guards(table):
            child, cond = pointing(self.graph, e, t)
            staying = plain.staying(e.child, child)
            if staying is not None:
                cond = and_(cond, staying)
            parts.append(~exists().where(cond))
        return and_(true(), *parts)

    def staying(
        self, table: str, rows: FromClause, visiting: frozenset[str] = frozenset()
    ) -> ColumnElement[bool] | None:
        """Rows of `rows` (`table` or an alias of it) that erasure does not delete: not
        the subject's, or kept because rows that stay point at them; None: all stay."""
        going = self.own(table) if self.graph.deleted(table) else None
        if going is None:
            return None
        keys = select(*key_columns(self.graph, table)).where(going)
        staying: ColumnElement[bool] = ~cols_expr(rows, self.graph.keys[table]).in_(keys)
        kept = self.kept(table, rows, KEEPING, visiting)
        return staying if kept is None else or_(staying, kept)

    def kept(
        self,
        table: str,
        rows: FromClause,
        ways: tuple[ParentErase, ...] = KEEPING,
        visiting: frozenset[str] = frozenset(),
    ) -> ColumnElement[bool] | None:
        """Rows of `rows` that a row that stays points at through a reference whose way
        is one of `ways` (kept as a tombstone, or retained); None: no such reference."""
        edges = [e for e in self.graph.keep_edges(table) if self.graph.way(e) in ways]
        if not edges or table in visiting:
            return None
        parts = []
        for e in edges:
            child = self.graph.tables[e.child].alias()
            pairs = zip(e.child_cols, e.parent_cols, strict=True)
            cond = and_(*[child.c[c] == rows.c[p] for c, p in pairs])
            staying = self.staying(e.child, child, visiting | {table})
            parts.append(exists().where(cond if staying is None else and_(cond, staying)))
        return or_(*parts)

    def kept_split(
        self, table: str, rows: FromClause
    ) -> tuple[ColumnElement[bool] | None, ColumnElement[bool] | None]:
        """Rows of `rows` kept for rows that stay: (retained as they are, kept as
        anonymised tombstones); a row kept both ways is retained. None: no such rows."""
        retained = self.kept(table, rows, (ParentErase.RETAIN,))
        tombstones = self.kept(table, rows, (ParentErase.ANONYMIZE,))
        if retained is not None and tombstones is not None:
            tombstones = and_(tombstones, not_(retained))
        return retained, tombstones
