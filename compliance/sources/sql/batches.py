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

Rows come as `found.Found` (key columns first, then the columns references use), read
once per table for the whole request (`subject`); every statement binds their keys. The
server-side batches of `direct` run on the same held connection (`rows`, `count`), and
`flush` makes them durable once their table is done.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Delete,
    Executable,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    select,
    text,
    update,
)

from compliance.sources.sql.found import Found
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import (
    Key,
    all_anonymized,
    anonymized_value,
    chunk_size,
    chunked,
    fetch_all,
    is_anonymized,
    key_columns,
    key_in,
)
from compliance.sources.sql.manifest import Edge
from compliance.sources.sql.query import pointing
from compliance.sources.sql.references import fix_references, kept_keys
from compliance.sources.sql.subject import Subject

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
        subject: Subject,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        last: bool,
    ) -> BatchCounts:
        """Erase the batch `rows` (key columns first, then the other `columns`) of
        `table`, a table whose rows are deleted; `last`: the table's last batch. Rows
        that rows which stay still point at are kept (anonymised or retained) instead."""
        batch = Found(columns, len(self.graph.keys[table]), rows)
        keys = batch.keys()
        simple = not self.graph.fix_edges(table) and not self.graph.keep_edges(table)
        simple = simple and not subject.guarded.get(table)
        if self.graph.dialect == "postgresql" and simple and len(keys) <= self._chunk(table):
            stmt = delete(self.graph.tables[table]).where(key_in(self.graph, table, keys))
            deleted = self._single(stmt, durable=last)
            return BatchCounts(deleted=deleted, missed=len(keys) - deleted)
        with self.source.connect() as conn:
            if self.graph.dialect == "postgresql" and not last:
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            orphans = batch.only(subject.guarded.get(table, frozenset()))
            rest = batch.without(orphans.key_set)
            kept = kept_keys(conn, subject, table, rest)
            going = rest.without(kept.retained | kept.tombstones)
            detached, others = fix_references(conn, subject, table, going)
            deleted = self._delete(conn, table, going.keys())
            if orphans:
                guards = self.graph.guards(table)
                more, theirs = fix_references(conn, subject, table, orphans, skip=guards)
                detached, others = detached + more, others + theirs
                deleted += self._delete_unused(conn, table, guards, orphans.keys())
            tombstones = anonymize_rows(self.source, conn, table, sorted(kept.tombstones))
        missed = len(going) + len(orphans) - deleted
        return BatchCounts(deleted, tombstones, len(kept.retained), detached, others, missed)

    def _chunk(self, table: str) -> int:
        return chunk_size(self.graph.dialect, len(self.graph.keys[table]))

    def _delete(self, conn: Connection, table: str, keys: Sequence[Key]) -> int:
        """DELETE the rows with `keys` (in chunks); how many went."""
        t = self.graph.tables[table]
        deleted = 0
        for part in chunked(keys, self._chunk(table)):
            deleted += int(conn.execute(delete(t).where(key_in(self.graph, table, part))).rowcount)
        return deleted

    def _delete_unused(
        self, conn: Connection, table: str, guards: Sequence[Edge], keys: Sequence[Key]
    ) -> int:
        """DELETE the rows with `keys` that no row points at through `guards` as the
        statement runs (in chunks): the check and the deletion are one statement, so a
        row written meanwhile that points at one keeps it; how many went."""
        t = self.graph.tables[table]
        unused = [~exists().where(pointing(self.graph, e, t)[1]) for e in guards]
        deleted = 0
        for part in chunked(keys, self._chunk(table)):
            stmt = delete(t).where(key_in(self.graph, table, part), *unused)
            deleted += int(conn.execute(stmt).rowcount)
        return deleted

    def _single(self, stmt: Delete, *, durable: bool) -> int:
        with self.source.errors():
            try:
                conn = self._session(durable=durable)
                deleted = int(conn.execute(stmt).rowcount)
            except BaseException:
                self.discard()
                raise
        if durable:
            self.release()
        return deleted

    def rows(self, stmt: Select[Any]) -> list[Row]:
        """The rows of `stmt`, one autocommitted statement on the held connection."""
        with self._asynchronously() as conn:
            return fetch_all(conn, stmt)

    def count(self, stmt: Executable, params: dict[str, Any]) -> int:
        """Run `stmt` (a DELETE) with `params` as one autocommitted statement on the held
        connection; how many rows it changed."""
        with self._asynchronously() as conn:
            return int(conn.execute(stmt, params).rowcount)

    @contextmanager
    def _asynchronously(self) -> Iterator[Connection]:
        """The held connection, its commits asynchronous (batches before their table's
        end: `flush` makes them durable); an error discards it."""
        with self.source.errors():
            try:
                yield self._session(durable=False)
            except BaseException:
                self.discard()
                raise

    def flush(self) -> None:
        """Make every batch committed on the held connection durable: one durable commit
        of a transaction with an id flushes the WAL of all earlier commits with it."""
        if self._conn is None or not self._asynchronous:
            return
        with self.source.errors():
            try:
                self._session(durable=True).execute(text("SELECT pg_current_xact_id()"))
            except BaseException:
                self.discard()
                raise
        self.release()

    def _session(self, *, durable: bool) -> Connection:
        """The held connection, its commits durable or not."""
        conn = self._held()
        if self._asynchronous == durable:
            mode = "on" if durable else "off"
            conn.execute(text(f"SET synchronous_commit = {mode}"))
            self._asynchronous = not durable
        return conn

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
    current: list[Any] = []
    for part in chunked(keys, chunk_size(graph.dialect, len(names))):
        query = select(*key_columns(graph, table), *[t.c[c] for c in cols])
        current += conn.execute(query.where(key_in(graph, table, part))).all()
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
