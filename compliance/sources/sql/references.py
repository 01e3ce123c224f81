"""Rows that stay and point at rows an erasure removes: which rows are kept for them, and
how the references of the others are changed (OWNERSHIP.md, `ownership`).

Inside one delete batch's transaction: `kept_keys` splits off the batch's rows that rows
which stay still point at (kept as anonymised tombstones, or retained), `fix_references`
sets the references to the rest to NULL or repoints them to the parent table's
placeholder row (created on first use by `ensure_placeholder`), counting changed rows of
other people apart from the subject's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, func, insert, not_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import (
    Key,
    from_json,
    key_columns,
    key_in,
    placeholder_key,
    values_in,
)
from compliance.sources.sql.manifest import Edge, EdgeKind, ParentErase
from compliance.sources.sql.query import Selector

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Kept:
    """Keys of a batch's rows that stay: `retained` as they are, `tombstones` anonymised."""

    retained: frozenset[Key] = frozenset()
    tombstones: frozenset[Key] = frozenset()

    def __contains__(self, key: object) -> bool:
        return key in self.retained or key in self.tombstones


def kept_keys(conn: Connection, selector: Selector, table: str, keys: Sequence[Key]) -> Kept:
    """Which of `keys` rows that stay still point at (empty when nothing can)."""
    graph = selector.graph
    if not graph.keep_edges(table) or not keys:
        return Kept()
    retained, tombstones = selector.kept_split(table, graph.tables[table])
    return Kept(
        _matching(conn, graph, table, keys, retained),
        _matching(conn, graph, table, keys, tombstones),
    )


def _matching(
    conn: Connection,
    graph: Graph,
    table: str,
    keys: Sequence[Key],
    where: ColumnElement[bool] | None,
) -> frozenset[Key]:
    """Which of `keys` rows of `table` match `where` (none when it is None)."""
    if where is None:
        return frozenset()
    query = select(*key_columns(graph, table)).where(key_in(graph, table, keys), where)
    return frozenset(tuple(row) for row in conn.execute(query))


def fix_references(
    conn: Connection,
    selector: Selector,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Row],
) -> tuple[int, int]:
    """Before `rows` of `table` are deleted, set what points at them to NULL or repoint
    it to the placeholder row. Returns (detached: the subject's own rows that stay,
    others: rows of other people)."""
    graph = selector.graph
    detached = others = 0
    for e in graph.fix_edges(table):
        positions = [list(columns).index(c) for c in e.parent_cols]
        values = sorted({tuple(row[p] for p in positions) for row in rows})
        if not values:
            continue
        child = graph.tables[e.child]
        where = values_in([child.c[c] for c in e.child_cols], values, graph.dialect)
        theirs = _others(conn, selector, e, where)
        if graph.way(e) == ParentErase.PLACEHOLDER:
            ensure_placeholder(conn, graph, table)
            spare = placeholder_key(graph, table)
            assert spare is not None  # checked at load
            target = dict(zip(e.child_cols, _pick(graph, e, spare), strict=True))
        else:
            target = dict.fromkeys(e.child_cols)
        changed = int(conn.execute(update(child).where(where).values(target)).rowcount)
        others += theirs
        if e.kind == EdgeKind.OWNED or not graph.deleted(e.child):
            detached += changed - theirs
    return detached, others


def _others(conn: Connection, selector: Selector, e: Edge, where: Any) -> int:
    """How many rows matching `where` of `e`'s child are not the subject's."""
    if e.kind == EdgeKind.OWNED:
        return 0  # an owned child of the subject's row is the subject's
    child = selector.graph.tables[e.child]
    own = selector.own(e.child)
    condition = where if own is None else and_(where, not_(own))
    return int(conn.execute(select(func.count()).select_from(child).where(condition)).scalar_one())


def _pick(graph: Graph, e: Edge, key: Key) -> list[Any]:
    """The placeholder row's values of the columns `e` points at."""
    values = dict(graph.rules[e.parent].placeholder)
    values.update(zip(graph.keys[e.parent], key, strict=True))
    return [values[c] for c in e.parent_cols]


def ensure_placeholder(
    conn: Connection, graph: Graph, table: str, seen: frozenset[str] = frozenset()
) -> None:
    """Create `table`'s placeholder row unless it exists (and first those of the tables
    it points at that have one); safe when two erasures do it at once."""
    spare = placeholder_key(graph, table)
    if spare is None or table in seen:
        return
    if conn.execute(select(func.count()).where(key_in(graph, table, [spare]))).scalar_one():
        return
    t = graph.tables[table]
    for e in graph.edges:
        if e.child == table and e.parent != table:
            ensure_placeholder(conn, graph, e.parent, seen | {table})
    values = {name: from_json(t.c[name], v) for name, v in graph.rules[table].placeholder}
    if graph.dialect == "postgresql":
        conn.execute(postgresql.insert(t).values(values).on_conflict_do_nothing())
    elif graph.dialect == "sqlite":
        conn.execute(sqlite.insert(t).values(values).on_conflict_do_nothing())
    else:
        conn.execute(insert(t).values(values))
