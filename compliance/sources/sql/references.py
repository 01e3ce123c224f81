"""Rows that stay and point at rows an erasure removes: which rows are kept for them, and
how the references of the others are changed (OWNERSHIP.md, `ownership`).

Inside one delete batch's transaction: `kept_keys` splits off the batch's rows that rows
which stay still point at (kept as anonymised tombstones, or retained), `fix_references`
sets the references to the rest to NULL or repoints them to the parent table's
placeholder row (created on first use by `ensure_placeholder`), counting changed rows of
other people apart from the subject's own. Every statement binds the batch's values and
the subject's keys as lists (`subject`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Update, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from compliance.sources.sql.found import Found
from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import (
    Key,
    chunk_size,
    chunked,
    from_json,
    key_columns,
    key_in,
    placeholder_key,
    values_in,
)
from compliance.sources.sql.manifest import Edge, EdgeKind, ParentErase
from compliance.sources.sql.subject import Subject

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Kept:
    """Keys of a batch's rows that stay: `retained` as they are, `tombstones` anonymised."""

    retained: frozenset[Key] = frozenset()
    tombstones: frozenset[Key] = frozenset()

    def __contains__(self, key: object) -> bool:
        return key in self.retained or key in self.tombstones


def kept_keys(conn: Connection, subject: Subject, table: str, batch: Found) -> Kept:
    """Which rows of `batch` rows that stay still point at (empty when nothing can).
    Rows just found unused (orphans checked at the table's turn) need no second look
    when every reference that keeps a row is one that check covered."""
    graph = subject.graph
    edges = graph.keep_edges(table)
    if not edges or not batch:
        return Kept()
    if all(not graph.goes_with_parent(e) for e in edges):
        batch = batch.without(subject.verified.get(table, ()))
    retained, tombstones = subject.kept_split(conn, table, batch)
    return Kept(retained.key_set, tombstones.key_set)


def fix_references(
    conn: Connection, subject: Subject, table: str, rows: Found, skip: Sequence[Edge] = ()
) -> tuple[int, int]:
    """Before `rows` of `table` are deleted, set what points at them to NULL or repoint
    it to the placeholder row: one UPDATE per reference (and chunk of values), which
    returns the keys it changed where the database can, so other people's rows are told
    from the subject's without a count; not through `skip` (references whose rows keep
    `rows` from deletion). Returns (detached: the subject's own rows that stay, others:
    rows of other people)."""
    graph = subject.graph
    detached = others = 0
    for e in graph.fix_edges(table):
        if e in skip:
            continue
        values = rows.values(e.parent_cols)
        if not values:
            continue
        child = graph.tables[e.child]
        if graph.way(e) == ParentErase.PLACEHOLDER:
            ensure_placeholder(conn, graph, table)
            spare = placeholder_key(graph, table)
            assert spare is not None  # checked at load
            target = dict(zip(e.child_cols, _pick(graph, e, spare), strict=True))
        else:
            target = dict.fromkeys(e.child_cols)
        changed, theirs = 0, 0
        size = chunk_size(graph.dialect, len(e.child_cols))
        for part in chunked(values, size):
            where = values_in([child.c[c] for c in e.child_cols], part, graph.dialect)
            n, t = _update(conn, subject, e, update(child).where(where).values(target), where)
            changed, theirs = changed + n, theirs + t
        others += theirs
        if e.kind == EdgeKind.OWNED or not graph.deleted(e.child):
            detached += changed - theirs
    return detached, others


def _update(
    conn: Connection, subject: Subject, e: Edge, stmt: Update, where: ColumnElement[bool]
) -> tuple[int, int]:
    """Run `stmt` (an UPDATE of `e`'s child rows matching `where`): (rows changed, of
    them rows of other people)."""
    if e.kind == EdgeKind.OWNED:  # an owned child of the subject's row is the subject's
        return int(conn.execute(stmt).rowcount), 0
    graph = subject.graph
    keys = key_columns(graph, e.child)
    if conn.dialect.update_returning:
        changed = [tuple(row) for row in conn.execute(stmt.returning(*keys))]
    else:
        changed = [tuple(row) for row in conn.execute(select(*keys).where(where))]
        conn.execute(stmt)
    own = subject.own(conn, e.child).key_set
    return len(changed), sum(1 for key in changed if key not in own)


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
