"""One delete batch of a SQL erasure: detach what stays, delete the rows, commit.

Each batch is one transaction. On PostgreSQL a batch that is a single statement (the
table has nothing to detach) runs as one autocommitted ``DELETE`` on a connection held
for the table, so the batch costs one round trip, not four (pool ping, ``BEGIN``,
``DELETE``, ``COMMIT``). Batches before a table's last one commit asynchronously
(``synchronous_commit = off``: no wait for the WAL flush); the last one commits durably,
which flushes every earlier commit with it, so by the time the checkpoint moves past a
table all of its deletes are on disk. A database crash can only undo batches of the
table in progress, whose rows the next run finds again (a re-deleted row may then be
counted twice in the receipt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Delete, delete, text, update

from compliance.sources.sqlgraph import Graph
from compliance.sources.sqlkeys import key_in, values_in
from compliance.sources.sqlrules import Edge

if TYPE_CHECKING:
    from compliance.sources.sql import SqlSource

Row = tuple[Any, ...]


class Deleter:
    """Runs the delete batches of one source; holds at most one connection (see module)."""

    def __init__(self, source: SqlSource) -> None:
        self.source = source
        self._conn: Connection | None = None
        self._asynchronous = False  # the held session's synchronous_commit is off

    @property
    def graph(self) -> Graph:
        return self.source.graph

    def delete(
        self, table: str, columns: Sequence[str], rows: Sequence[Row], *, last: bool
    ) -> tuple[int, int]:
        """Delete the batch `rows` (key columns first, then `columns`' referenced ones)
        of `table`; `last`: the table's last batch. Returns (deleted, detached)."""
        width = len(self.graph.keys[table])
        keys = rows if width == len(columns) else [row[:width] for row in rows]
        stmt = delete(self.graph.tables[table]).where(key_in(self.graph, table, keys))
        edges = self.graph.detach_edges(table)
        if self.graph.dialect == "postgresql" and not edges:
            return self._single(stmt, durable=last), 0
        detached = 0
        with self.source.connect() as conn:
            if self.graph.dialect == "postgresql" and not last:
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            for e in edges:
                detached += self._detach(conn, e, columns, rows)
            deleted = int(conn.execute(stmt).rowcount)
        return deleted, detached

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

    def _detach(
        self, conn: Connection, e: Edge, columns: Sequence[str], rows: Sequence[Row]
    ) -> int:
        positions = [list(columns).index(c) for c in e.parent_cols]
        values = sorted({tuple(row[p] for p in positions) for row in rows})
        child = self.graph.tables[e.child]
        where = values_in([child.c[c] for c in e.child_cols], values, self.graph.dialect)
        stmt = update(child).where(where).values(dict.fromkeys(e.child_cols))
        return int(conn.execute(stmt).rowcount)

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
