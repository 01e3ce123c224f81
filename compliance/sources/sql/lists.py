"""Statements over bound lists of values, for `subject`: conditions that split a long
list into chunks, the rows of a table that point at some values and stay, whether
parent rows exist, and which tables orphans change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, Table, not_, or_, select

from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import Key, chunk_size, chunked, fetch_all, key_in, values_in
from compliance.sources.sql.manifest import Edge, EdgeKind

RowFilter = Callable[[Key], bool]


def everything(_row: Key) -> bool:
    """The filter of a query that left out in SQL what it had to."""
    return True


class _Outside:
    """Rows (columns, then the child's key) whose key is not among `gone`; what is kept
    of a row is its first `n` values."""

    def __init__(self, gone: set[Key], n: int) -> None:
        self.gone, self.n = gone, n

    def __call__(self, row: Key) -> bool:
        return row[self.n :] not in self.gone


def staying_query(
    graph: Graph,
    child: Table,
    e: Edge,
    values: Sequence[Key],
    columns: list[Any],
    leaving: Sequence[Key],
) -> tuple[Select[Any], RowFilter]:
    """A query of `columns` of `child`'s rows pointing through `e` at `values`, but the
    rows with keys `leaving` (the subject's, which erasure deletes); and the filter for
    its rows: `everything` when SQL left those out, else (too many keys for one
    statement) the query returns the child's key after `columns` and the filter drops
    them."""
    where = values_in([child.c[c] for c in e.child_cols], values, graph.dialect)
    if not leaving:
        return select(*columns).where(where).distinct(), everything
    if len(leaving) <= chunk_size(graph.dialect, len(graph.keys[e.child])):
        query = select(*columns).where(where, not_(key_in(graph, e.child, leaving)))
        return query.distinct(), everything
    keys = [child.c[c] for c in graph.keys[e.child]]
    return select(*columns, *keys).where(where), _Outside(set(leaving), len(columns))


def pack(
    identity: ColumnElement[bool] | None,
    lists: Sequence[tuple[list[Any], Sequence[Key]]],
    graph: Graph,
) -> list[ColumnElement[bool]]:
    """Conditions for the rows matching `identity` or whose columns hold one of a list's
    values: one condition when every list fits one statement, else one per chunk."""
    pg = graph.dialect == "postgresql"
    total = sum(len(values) * (1 if pg else len(cols)) for cols, values in lists)
    if total <= chunk_size(graph.dialect):
        parts = [values_in(cols, values, graph.dialect) for cols, values in lists]
        if identity is not None:
            parts.insert(0, identity)
        return [or_(*parts)] if parts else []
    conditions = [] if identity is None else [identity]
    for cols, values in lists:
        step = chunk_size(graph.dialect, len(cols))
        conditions += [values_in(cols, part, graph.dialect) for part in chunked(values, step)]
    return conditions


def existing(conn: Connection, graph: Graph, e: Edge, values: Sequence[Key]) -> set[Key]:
    """Which of `values` of `e`'s parent columns a row of the parent holds."""
    parent = graph.tables[e.parent]
    cols = [parent.c[c] for c in e.parent_cols]
    found: set[Key] = set()
    for part in chunked(values, chunk_size(graph.dialect, len(cols))):
        query = select(*cols).where(values_in(cols, part, graph.dialect)).distinct()
        found |= {tuple(row) for row in fetch_all(conn, query)}
    return found


def descendants(graph: Graph, tables: set[str]) -> frozenset[str]:
    """`tables` and the tables owned by them, to a fixpoint."""
    found = set(tables)
    changed = bool(found)
    while changed:
        changed = False
        for e in graph.edges:
            if e.kind == EdgeKind.OWNED and e.parent in found and e.child not in found:
                found.add(e.child)
                changed = True
    return frozenset(found)
