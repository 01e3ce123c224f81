"""Reading a SQL erasure's rows ahead: keys of the current table, up to READ_AHEAD at a
time, kept in memory between erase calls in the same process.

An optimisation only: without it every batch would search the table again. What was read
belongs to one scope (table and a fingerprint of the erasure) and one checkpoint
position; any other scope or position, or a new process, reads again from the
checkpoint. Rows are the key columns, then every column a detached reference points at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from compliance.sources.sqlkeys import Key, fetch_all, key_after, key_columns
from compliance.sources.sqlquery import Selector
from compliance.sources.sqlvalues import key_from_json

if TYPE_CHECKING:
    from compliance.sources.sql import SqlSource

READ_AHEAD = 50_000  # keys read per query: bounds memory whatever the subject's size

Scope = tuple[str, str]  # (table, fingerprint of identities and orphans)
Row = tuple[Any, ...]


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
    """The rows read ahead for one `SqlSource`'s erasure."""

    def __init__(self, source: SqlSource) -> None:
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
        """Key columns, then every column a detached reference points at."""
        graph = self.source.graph
        names = list(graph.keys[table])
        for e in graph.detach_edges(table):
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
