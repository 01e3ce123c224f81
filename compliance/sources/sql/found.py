"""Rows of one table as a request keeps them: each row's key and the columns references
use, read once, in key order; and, for an export, the rows themselves while few.

`read_rows` runs the read: one statement per bound condition it is given (several when
a key list was too long for one), rows found by more than one counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, or_, select

from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import Key, fetch_all, sort_key, values_in
from compliance.sources.sql.manifest import Edge

Row = tuple[Any, ...]

BUFFER_ROWS = 500  # exported rows of one table kept from its read; more: read again by key
BUFFER_BYTES = 4 * 1024 * 1024  # ... and at most about this much of their values


class Found:
    """The subject's rows of one table (or some of them): `rows` hold the key columns
    first, then every column a reference uses (`columns`), sorted by key; `full` the
    rows as exported (None: not read, or too many to keep: read them again by key)."""

    def __init__(
        self,
        columns: Sequence[str],
        width: int,
        rows: Sequence[Row] = (),
        full: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.columns = tuple(columns)
        self.width = width
        self.rows = list(rows)
        self.full = None if full is None else list(full)
        self._keys: frozenset[Key] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def keys(self) -> list[Key]:
        return [row[: self.width] for row in self.rows]

    @property
    def key_set(self) -> frozenset[Key]:
        if self._keys is None:
            self._keys = frozenset(self.keys())
        return self._keys

    def picker(self, names: Sequence[str]) -> list[int]:
        """Positions of `names` in a row."""
        return [self.columns.index(n) for n in names]

    def values(self, names: Sequence[str]) -> list[Key]:
        """The distinct values of columns `names` (NULL in any: left out), in order."""
        at = self.picker(names)
        found = {tuple(row[i] for i in at) for row in self.rows}
        return sorted((v for v in found if None not in v), key=sort_key)

    def where(self, names: Sequence[str], values: Iterable[Key]) -> Found:
        """The rows whose columns `names` hold one of `values`."""
        at, wanted = self.picker(names), set(values)
        return self._subset([tuple(row[i] for i in at) in wanted for row in self.rows])

    def only(self, keys: Iterable[Key]) -> Found:
        """The rows with one of `keys`."""
        wanted = set(keys)
        return self._subset([row[: self.width] in wanted for row in self.rows])

    def without(self, keys: Iterable[Key]) -> Found:
        """The rows with none of `keys`."""
        unwanted = set(keys)
        return self._subset([row[: self.width] not in unwanted for row in self.rows])

    def after(self, key: Key | None) -> Found:
        """The rows whose key comes after `key` (all of them for None)."""
        if key is None:
            return self
        bound = sort_key(key)
        return self._subset([sort_key(row[: self.width]) > bound for row in self.rows])

    def union(self, other: Found) -> Found:
        """These rows and `other`'s (rows of the same table, read the same way)."""
        if not other:
            return self
        if not self:
            return other
        mine = self.key_set
        extra = [i for i, row in enumerate(other.rows) if row[: self.width] not in mine]
        rows = self.rows + [other.rows[i] for i in extra]
        full = None
        if self.full is not None and other.full is not None:
            full = self.full + [other.full[i] for i in extra]
        return _sorted(self.columns, self.width, rows, full)

    def _subset(self, keep: list[bool]) -> Found:
        rows = [row for row, k in zip(self.rows, keep, strict=True) if k]
        full = None
        if self.full is not None:
            full = [row for row, k in zip(self.full, keep, strict=True) if k]
        return Found(self.columns, self.width, rows, full)


def base_columns(graph: Graph, table: str) -> list[str]:
    """Key columns, then every column of `table` a reference between tables uses."""
    names = list(graph.keys[table])
    for e in (*graph.edges, *graph.foreign):
        if e.child == table:
            names.extend(c for c in e.child_cols if c not in names)
        if e.parent == table:
            names.extend(c for c in e.parent_cols if c not in names)
    return names


def exported_columns(graph: Graph, table: str) -> list[Column[Any]]:
    """The columns an export shows (all but the manifest's `export_exclude`)."""
    excluded = set(graph.rules[table].export_exclude)
    return [c for c in graph.tables[table].columns if c.name not in excluded]


def empty(graph: Graph, table: str) -> Found:
    return Found(base_columns(graph, table), len(graph.keys[table]), (), [])


def read_rows(
    conn: Connection,
    graph: Graph,
    table: str,
    conditions: Sequence[ColumnElement[bool]],
    *,
    full: bool = False,
    extra: Sequence[str] = (),
) -> Found:
    """The rows of `table` matching any of `conditions`, one statement each (a row
    found by several counted once). `full`: keep the exported rows too, while they are
    few (`BUFFER_ROWS`, `BUFFER_BYTES`; past that the keys are read instead, and the
    export reads the rows again by key); `extra`: more columns to keep in each row."""
    names = base_columns(graph, table)
    names += [n for n in extra if n not in names]
    if full:
        found = _read_full(conn, graph, table, conditions, names)
        if found is not None:
            return found
    t = graph.tables[table]
    width = len(graph.keys[table])
    rows: dict[Key, Row] = {}
    for condition in conditions:
        for row in fetch_all(conn, select(*[t.c[n] for n in names]).where(condition)):
            rows.setdefault(tuple(row[:width]), tuple(row))
    return _sorted(names, width, list(rows.values()), None)


Ahead = Sequence[tuple[Edge, frozenset[Key]]]  # references, and values they may point at
Pointed = list[tuple[Key, Key]]  # rows pointing at such values: (their columns, their key)


def read_with_pointing(
    conn: Connection,
    graph: Graph,
    table: str,
    condition: ColumnElement[bool],
    ahead: Ahead,
    limit: int,
    extra: Sequence[str] = (),
) -> tuple[Found, list[Pointed]] | None:
    """The rows of `table` matching `condition`, as `read_rows` keeps them, and in the
    same statement, per reference of `ahead` (out of `table`), every row pointing through
    it at one of its values. None when more than `limit` rows come back, or when a row
    the database found matches neither test here (read them apart then)."""
    names = base_columns(graph, table)
    names += [n for n in extra if n not in names]
    t = graph.tables[table]
    dialect = graph.dialect
    pointing = [values_in([t.c[c] for c in e.child_cols], sorted(v), dialect) for e, v in ahead]
    own = condition.label("_gdpr_own")
    query = select(*[t.c[n] for n in names], own).where(or_(condition, *pointing))
    rows = fetch_all(conn, query.limit(limit + 1))
    if len(rows) > limit:
        return None
    width = len(graph.keys[table])
    at = [[names.index(c) for c in e.child_cols] for e, _ in ahead]
    mine: dict[Key, Row] = {}
    pointed: list[Pointed] = [[] for _ in ahead]
    for row in rows:
        key, claimed = tuple(row[:width]), bool(row[-1])
        if claimed:
            mine.setdefault(key, tuple(row[:-1]))
        for (_, values), cols, into in zip(ahead, at, pointed, strict=True):
            value = tuple(row[i] for i in cols)
            if value in values:
                into.append((value, key))
                claimed = True
        if not claimed:
            return None
    return _sorted(names, width, list(mine.values()), None), pointed


def read_at_most(
    conn: Connection,
    graph: Graph,
    table: str,
    conditions: Sequence[ColumnElement[bool]],
    limit: int,
    extra: Sequence[str] = (),
) -> Found | None:
    """Like `read_rows` while the rows are at most `limit`; None when there are more
    (each statement asks for one row past `limit`, so nothing more is read)."""
    names = base_columns(graph, table)
    names += [n for n in extra if n not in names]
    t = graph.tables[table]
    width = len(graph.keys[table])
    rows: dict[Key, Row] = {}
    for condition in conditions:
        query = select(*[t.c[n] for n in names]).where(condition).limit(limit + 1)
        for row in fetch_all(conn, query):
            rows.setdefault(tuple(row[:width]), tuple(row))
        if len(rows) > limit:
            return None
    return _sorted(names, width, list(rows.values()), None)


def _read_full(
    conn: Connection,
    graph: Graph,
    table: str,
    conditions: Sequence[ColumnElement[bool]],
    names: list[str],
) -> Found | None:
    """Like `read_rows` with the exported rows; None when they are too many to keep."""
    t = graph.tables[table]
    width = len(graph.keys[table])
    shown = exported_columns(graph, table)
    wanted = [t.c[n] for n in names] + [c for c in shown if c.name not in names]
    rows: dict[Key, tuple[Row, dict[str, Any]]] = {}
    size = 0
    for condition in conditions:
        limit = BUFFER_ROWS + 1 - len(rows)
        found = conn.execute(select(*wanted).where(condition).limit(limit)).mappings().all()
        if len(found) >= limit:
            return None
        for row in found:
            base = tuple(row[n] for n in names)
            if base[:width] not in rows:
                shown_row = {c.name: row[c.name] for c in shown}
                rows[base[:width]] = (base, shown_row)
                size += _size(shown_row)
        if size > BUFFER_BYTES:
            return None
    return _sorted(names, width, [r for r, _ in rows.values()], [f for _, f in rows.values()])


def found_of(
    names: Sequence[str],
    width: int,
    shown: Sequence[Column[Any]],
    rows: Sequence[Mapping[str, Any]],
    *,
    full: bool,
) -> Found:
    """`rows` (mappings holding `names` and the `shown` columns) kept as `read_rows` keeps
    them: the exported rows too when `full` and within `BUFFER_ROWS` / `BUFFER_BYTES`."""
    kept: dict[Key, tuple[Row, Mapping[str, Any]]] = {}
    for row in rows:
        base = tuple(row[n] for n in names)
        kept.setdefault(base[:width], (base, row))
    shown_rows: list[Mapping[str, Any]] = [
        {c.name: row[c.name] for c in shown} for _, row in kept.values()
    ]
    if not full or len(kept) > BUFFER_ROWS or sum(map(_size, shown_rows)) > BUFFER_BYTES:
        return _sorted(names, width, [base for base, _ in kept.values()], None)
    return _sorted(names, width, [base for base, _ in kept.values()], shown_rows)


def _sorted(
    columns: Sequence[str],
    width: int,
    rows: list[Row],
    full: list[Mapping[str, Any]] | None,
) -> Found:
    order = sorted(range(len(rows)), key=lambda i: sort_key(rows[i][:width]))
    return Found(
        columns,
        width,
        [rows[i] for i in order],
        None if full is None else [full[i] for i in order],
    )


def _size(row: Mapping[str, Any]) -> int:
    return sum(len(v) if isinstance(v, str | bytes | bytearray) else 16 for v in row.values())
