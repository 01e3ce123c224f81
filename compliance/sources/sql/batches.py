"""One delete batch of a SQL erasure: keep the rows that rows which stay still point at
(anonymised or retained, see `references`), change the references to the rest, delete
them, commit.

Each batch is one transaction. On PostgreSQL a batch that is a single statement (the
table has nothing to detach) runs as one autocommitted ``DELETE`` on a connection held
for the table, so the batch costs one round trip, not four (pool ping, ``BEGIN``,
``DELETE``, ``COMMIT``). Batches before a table's last one commit asynchronously
(``synchronous_commit = off``: no wait for the WAL flush); the last one commits durably,
which flushes every earlier commit with it, so by the time the checkpoint moves past a
table all of its deletes are on disk. A database crash can only undo batches of the
table in progress, whose rows the next run finds again (a re-deleted row may then be
counted twice in the receipt).

One anonymise batch of a SQL erasure: rewrite the anonymised columns of the given rows.

Values already anonymised are left as they are (an earlier, interrupted run may have done
some), so repeating a batch changes nothing. The batch is one transaction: read the rows'
current values, then one ``UPDATE`` executed for every row that still needs it.

Reading a SQL erasure's rows ahead: keys of the current table, up to READ_AHEAD at a
time, kept in memory between erase calls in the same process.

An optimisation only: without it every batch would search the table again. What was read
belongs to one scope (table and a fingerprint of the erasure) and one checkpoint
position; any other scope or position, or a new process, reads again from the
checkpoint. Rows are the key columns, then every column a detached reference points at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Delete, and_, bindparam, delete, select, text, update

from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import (
    Key,
    all_anonymized,
    anonymized_value,
    fetch_all,
    is_anonymized,
    key_after,
    key_columns,
    key_from_json,
    key_in,
)
from compliance.sources.sql.query import Selector
from compliance.sources.sql.references import fix_references, kept_keys

Row = tuple[Any, ...]


class Deleter:
    """Runs the delete batches of one source; holds at most one connection (see module)."""

    def __init__(self, source: SourceHandle) -> None:
        self.source = source
        self._conn: Connection | None = None
        self._asynchronous = False  # the held session's synchronous_commit is off

    @property
    def graph(self) -> Graph:
        return self.source.graph

    def delete(
        self,
        selector: Selector,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        last: bool,
    ) -> BatchCounts:
        """Erase the batch `rows` (key columns first, then `columns`' referenced ones) of
        `table`, a table whose rows are deleted; `last`: the table's last batch. Rows
        that rows which stay still point at are kept (anonymised or retained) instead."""
        width = len(self.graph.keys[table])
        keys = [tuple(row[:width]) for row in rows]
        simple = not self.graph.fix_edges(table) and not self.graph.keep_edges(table)
        if self.graph.dialect == "postgresql" and simple:
            stmt = delete(self.graph.tables[table]).where(key_in(self.graph, table, keys))
            deleted = self._single(stmt, durable=last)
            return BatchCounts(deleted=deleted, missed=len(keys) - deleted)
        with self.source.connect() as conn:
            if self.graph.dialect == "postgresql" and not last:
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            kept = kept_keys(conn, selector, table, keys)
            going = [row for row, key in zip(rows, keys, strict=True) if key not in kept]
            detached, others = fix_references(conn, selector, table, columns, going)
            deleted = 0
            if going:
                where = key_in(self.graph, table, [k for k in keys if k not in kept])
                deleted = int(conn.execute(delete(self.graph.tables[table]).where(where)).rowcount)
            tombstones = anonymize_rows(self.source, conn, table, sorted(kept.tombstones))
        missed = len(going) - deleted
        return BatchCounts(deleted, tombstones, len(kept.retained), detached, others, missed)

    def _single(self, stmt: Delete, *, durable: bool) -> int:
        with self.source.errors():
            try:
                conn = self._held()
                if self._asynchronous == durable:
                    mode = "on" if durable else "off"
                    conn.execute(text(f"SET synchronous_commit = {mode}"))
                    self._asynchronous = not durable
                deleted = int(conn.execute(stmt).rowcount)
            except BaseException:
                self.discard()
                raise
        if durable:
            self.release()
        return deleted

    def _held(self) -> Connection:
        if self._conn is None:
            conn = self.source.engine.connect()
            self._conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            self._asynchronous = False
        return self._conn

    def release(self) -> None:
        """Give the held connection back to the pool, its session as it found it."""
        conn = self._conn
        if conn is None:
            return
        if self._asynchronous:
            try:
                with self.source.errors():
                    conn.execute(text("SET synchronous_commit = on"))
            except BaseException:
                self.discard()
                raise
        self._conn = None
        self._asynchronous = False
        conn.close()

    def discard(self) -> None:
        """Close the held connection for good (after an error its state is unknown)."""
        conn, self._conn = self._conn, None
        self._asynchronous = False
        if conn is not None:
            conn.invalidate()
            conn.close()


@dataclass(frozen=True)
class BatchCounts:
    """What one batch did: the subject's rows deleted, anonymised, retained (each row
    once); references detached in the subject's kept rows; other people's rows changed."""

    deleted: int = 0
    anonymized: int = 0
    retained: int = 0
    detached: int = 0
    others: int = 0
    missed: int = 0  # rows handed to the batch that its DELETE did not remove


def anonymize_batch(source: SourceHandle, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Anonymise the rows of `table` whose keys lead `rows`; returns how many changed."""
    names = source.graph.keys[table]
    with source.connect() as conn:
        return anonymize_rows(source, conn, table, [row[: len(names)] for row in rows])


def anonymize_rows(source: SourceHandle, conn: Connection, table: str, keys: Sequence[Key]) -> int:
    """Anonymise the rows of `table` with `keys` in `conn`'s transaction; how many changed."""
    if not keys:
        return 0
    graph = source.graph
    t = graph.tables[table]
    names = graph.keys[table]
    cols = [c for c, _ in graph.rules[table].anonymize]
    current = conn.execute(
        select(*key_columns(graph, table), *[t.c[c] for c in cols]).where(
            key_in(graph, table, keys)
        )
    ).all()
    params = [p for p in (_params(source, table, row) for row in current) if p is not None]
    if params:
        stmt = (
            update(t)
            .where(and_(*[t.c[n] == bindparam(f"k_{n}") for n in names]))
            .values({c: bindparam(f"v_{c}") for c in cols})
        )
        conn.execute(stmt, params)
    return len(params)


def _params(source: SourceHandle, table: str, row: Sequence[Any]) -> dict[str, Any] | None:
    """The UPDATE's parameters for one row (key, then anonymised columns); None: the row
    is anonymised already."""
    names = source.graph.keys[table]
    strategies = source.graph.rules[table].anonymize
    values = row[len(names) :]
    if all_anonymized(strategies, values):
        return None
    param = {f"k_{n}": row[i] for i, n in enumerate(names)}
    for (column, strategy), value in zip(strategies, values, strict=True):
        if not is_anonymized(strategy, value):  # an earlier run did it already
            where = f"{source.name}/{table}.{column}"
            value = anonymized_value(strategy, source.pseudonym_key, where, value)
        param[f"v_{column}"] = value
    return param


READ_AHEAD = 50_000  # keys read per query: bounds memory whatever the subject's size

Scope = tuple[str, str]  # (table, fingerprint of identities and orphans)


@dataclass
class _Pending:
    """Rows of the current table read ahead (at most READ_AHEAD at a time)."""

    scope: Scope
    after: Any  # the checkpoint's "after" these rows continue from
    loaded_to: Key | None  # the last key read so far
    rows: list[Row] = field(default_factory=list)
    taken: int = 0  # rows[:taken] were handed out
    exhausted: bool = False  # the last read found fewer rows than it asked for

    @property
    def left(self) -> int:
        return len(self.rows) - self.taken

    @property
    def drained(self) -> bool:
        """Nothing left to read or hand out: the batch just handed out was the last."""
        return self.exhausted and not self.left

    def take(self, size: int) -> list[Row]:
        batch = self.rows[self.taken : self.taken + size]
        self.taken += len(batch)
        return batch

    def add(self, found: list[Row]) -> None:
        self.rows = self.rows[self.taken :] + found
        self.taken = 0


class ReadAhead:
    """The rows read ahead for one source's erasure."""

    def __init__(self, source: SourceHandle) -> None:
        self.source = source
        self._pending: _Pending | None = None

    @property
    def drained(self) -> bool:
        """The batch just handed out was the table's last."""
        return self._pending is not None and self._pending.drained

    def clear(self) -> None:
        """Forget what was read (a new table, or an error: it may not have been erased)."""
        self._pending = None

    def moved_to(self, after: Any) -> None:
        """The checkpoint now continues from `after`; the rows read stay valid."""
        assert self._pending is not None
        self._pending.after = after

    def columns(self, table: str) -> list[str]:
        """Key columns, then every column a changed reference points at."""
        graph = self.source.graph
        names = list(graph.keys[table])
        for e in graph.fix_edges(table):
            names.extend(c for c in e.parent_cols if c not in names)
        return names

    def batch(self, scope: Scope, selector: Selector, after: Any, size: int) -> list[Row]:
        """The next `size` rows (key + referenced columns) of the subject in the table."""
        table = scope[0]
        pending = self._pending
        if pending is None or pending.scope != scope or pending.after != after:
            pending = _Pending(scope, after, self._decode_key(table, after))
            self._pending = pending
        if pending.left < size:
            self._fill(pending, selector)
        batch = pending.take(size)
        if not pending.left:
            self._fill(pending, selector)  # so that `drained` tells the last batch
        return batch

    def _fill(self, pending: _Pending, selector: Selector) -> None:
        if pending.exhausted:
            return
        table = pending.scope[0]
        found = self._load(table, selector, pending.loaded_to)
        pending.add(found)
        pending.exhausted = len(found) < READ_AHEAD
        if found:
            pending.loaded_to = tuple(found[-1][: len(self.source.graph.keys[table])])

    def _load(self, table: str, selector: Selector, start: Key | None) -> list[Row]:
        """Up to READ_AHEAD rows of the subject after key `start`, in key order."""
        where = selector.where(table)
        if where is None:
            return []
        graph = self.source.graph
        t = graph.tables[table]
        query = select(*[t.c[c] for c in self.columns(table)]).where(where)
        if start is not None:
            query = query.where(key_after(graph, table, start))
        query = query.order_by(*key_columns(graph, table)).limit(READ_AHEAD)
        with self.source.connect() as conn:
            return fetch_all(conn, query)

    def _decode_key(self, table: str, value: Any) -> Key | None:
        if value is None:
            return None
        return key_from_json(key_columns(self.source.graph, table), value)
