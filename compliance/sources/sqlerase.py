"""Erasure in a SQL source: one bounded, idempotent batch per call, children first.

A run goes through the tables of `Graph.order` (children before parents), one batch of
rows per call, each batch in its own transaction:

- ``delete``: first detach what still points at the batch (set references from rows that
  stay to NULL: link references such as ``users.referred_by``, anonymised or retained
  children), then delete the batch;
- ``anonymize``: rewrite the anonymised columns (values already anonymised are left as they
  are, so a repeated batch changes nothing);
- ``retain``: count the rows and touch nothing (the plan and receipt name the legal basis).

The first call records which shared rows (addresses...) the subject's rows point at and
nothing else uses: once those rows are deleted, nothing would lead to them any more.
They are deleted in their table's turn, and only if still unreferenced then.

The checkpoint is small JSON: the table index, the last key for anonymisation, and the
orphaned shared keys. Because parents go last, the rows left to erase can always be found
again from what remains, so a killed worker resumes from the checkpoint alone. Keys of the
current table are read ahead (up to READ_AHEAD at a time) and kept in memory between
calls in the same process: an optimisation, without which every batch would search the
table again; a new process simply reads again from the checkpoint. How a delete batch
runs and commits is in `sqldelete`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, bindparam, func, select, update

from compliance.identities import Identities
from compliance.sources.base import Disposition, EraseResult, LocationPlan
from compliance.sources.sqldelete import Deleter
from compliance.sources.sqlgraph import Graph
from compliance.sources.sqlkeys import Key, fetch_all, in_rows, key_after, key_columns, key_in
from compliance.sources.sqlquery import Selector
from compliance.sources.sqlvalues import (
    all_anonymized,
    anonymized_value,
    is_anonymized,
    key_from_json,
    key_to_json,
)

if TYPE_CHECKING:
    from compliance.sources.sql import SqlSource

READ_AHEAD = 50_000  # keys read per query: bounds memory whatever the subject's size


def orphans(source: SqlSource, conn: Connection, identities: Identities) -> dict[str, list[Key]]:
    """Keys of shared rows the subject's rows point at and nothing else uses."""
    graph = source.graph
    selector = Selector(graph, identities)
    found: dict[str, list[Key]] = {}
    for table in graph.order:
        candidates = selector.candidates(table)
        if candidates is None:
            continue
        query = (
            select(*key_columns(graph, table))
            .where(candidates, selector.unreferenced(table))
            .order_by(*key_columns(graph, table))
        )
        keys = [tuple(row) for row in conn.execute(query)]
        if keys:
            found[table] = keys
    return found


def erase_plan(source: SqlSource, conn: Connection, identities: Identities) -> list[LocationPlan]:
    """What erasure would do, per table (and per detached reference); writes nothing."""
    graph = source.graph
    selector = Selector(graph, identities, orphans(source, conn, identities))
    plans = []
    for table in graph.order:
        rule = graph.rules[table]
        count = source.count(conn, table, selector)
        if count or rule.on_erase == Disposition.RETAIN:
            basis = rule.legal_basis if rule.on_erase == Disposition.RETAIN else ""
            plans.append(LocationPlan(table, rule.on_erase, count, basis))
        if rule.on_erase == Disposition.DELETE and count:
            plans.extend(_detach_plan(source, conn, table, selector))
    return plans


def _detach_plan(
    source: SqlSource, conn: Connection, table: str, selector: Selector
) -> list[LocationPlan]:
    """Rows that stay but point at rows erasure deletes (their reference is set to NULL)."""
    graph = source.graph
    parent = graph.tables[table]
    plans = []
    for e in graph.detach_edges(table):
        child = graph.tables[e.child]
        where = in_rows(child, e.child_cols, parent, e.parent_cols, selector.rows(table))
        staying = selector.staying(e.child, child)
        if staying is not None:
            where = and_(where, staying)
        count = conn.execute(select(func.count()).select_from(child).where(where)).scalar_one()
        if count:
            location = f"{e.child}.{','.join(e.child_cols)}"
            plans.append(LocationPlan(location, Disposition.ANONYMIZE, int(count)))
    return plans


@dataclass
class _Pending:
    """Rows of the current table read ahead (at most READ_AHEAD at a time)."""

    scope: tuple[str, str]  # (table, fingerprint of identities and orphans)
    after: Any  # the checkpoint's "after" these rows continue from
    loaded_to: Key | None  # the last key read so far
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    taken: int = 0  # rows[:taken] were handed out
    exhausted: bool = False  # the last read found fewer rows than it asked for

    @property
    def left(self) -> int:
        return len(self.rows) - self.taken

    @property
    def drained(self) -> bool:
        """Nothing left to read or hand out: the batch just handed out was the last."""
        return self.exhausted and not self.left

    def take(self, size: int) -> list[tuple[Any, ...]]:
        batch = self.rows[self.taken : self.taken + size]
        self.taken += len(batch)
        return batch

    def add(self, found: list[tuple[Any, ...]]) -> None:
        self.rows = self.rows[self.taken :] + found
        self.taken = 0


class Eraser:
    """The erase state machine of one `SqlSource`."""

    def __init__(self, source: SqlSource) -> None:
        self.source = source
        self.deleter = Deleter(source)
        self._pending: _Pending | None = None

    @property
    def graph(self) -> Graph:
        return self.source.graph

    def step(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        try:
            return self._step(identities, checkpoint, batch_size)
        except BaseException:
            self._pending = None  # what was read ahead may not have been erased
            self.deleter.release()
            raise

    def _step(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        if "table" not in checkpoint:
            return self._prepare(identities)
        index = int(checkpoint["table"])
        if index >= len(self.graph.order):
            return EraseResult(done=True, checkpoint=dict(checkpoint))
        table = self.graph.order[index]
        encoded = checkpoint.get("orphans") or {}
        selector = Selector(self.graph, identities, self._decode_orphans(encoded))
        disposition = self.graph.rules[table].on_erase
        if disposition == Disposition.RETAIN:
            with self.source.connect() as conn:
                retained = self.source.count(conn, table, selector)
            return self._next(checkpoint, index, retained=retained)
        scope = (table, _fingerprint(identities, encoded))
        rows = self._batch(scope, selector, checkpoint.get("after"), batch_size)
        if not rows:
            return self._next(checkpoint, index)
        if disposition == Disposition.DELETE:
            final = self._pending is not None and self._pending.drained
            columns = self._columns(table)
            deleted, detached = self.deleter.delete(table, columns, rows, last=final)
            return self._progress(checkpoint, deleted=deleted, anonymized=detached)
        changed = self._anonymize(table, rows)
        last = key_to_json(rows[-1][: len(self.graph.keys[table])])
        assert self._pending is not None
        self._pending.after = last
        return self._progress(checkpoint, anonymized=changed, after=last)

    # --- phases ---------------------------------------------------------------------

    def _prepare(self, identities: Identities) -> EraseResult:
        with self.source.connect() as conn:
            found = orphans(self.source, conn, identities)
        encoded = {t: [key_to_json(key) for key in keys] for t, keys in found.items()}
        return EraseResult(done=False, checkpoint={"table": 0, "orphans": encoded})

    def _next(self, checkpoint: Mapping[str, Any], index: int, retained: int = 0) -> EraseResult:
        state = {**checkpoint, "table": index + 1, "after": None}
        self._pending = None
        self.deleter.release()
        done = index + 1 >= len(self.graph.order)
        if done:
            state.pop("orphans", None)  # nothing left to look up: drop the keys
        return EraseResult(done=done, checkpoint=state, retained=retained)

    def _progress(
        self,
        checkpoint: Mapping[str, Any],
        *,
        deleted: int = 0,
        anonymized: int = 0,
        after: list[Any] | None = None,
    ) -> EraseResult:
        state = {**checkpoint, "after": after}
        return EraseResult(done=False, checkpoint=state, deleted=deleted, anonymized=anonymized)

    # --- batches --------------------------------------------------------------------

    def _columns(self, table: str) -> list[str]:
        """Key columns, then every column a detached reference points at."""
        names = list(self.graph.keys[table])
        for e in self.graph.detach_edges(table):
            names.extend(c for c in e.parent_cols if c not in names)
        return names

    def _batch(
        self, scope: tuple[str, str], selector: Selector, after: Any, size: int
    ) -> list[tuple[Any, ...]]:
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
            pending.loaded_to = tuple(found[-1][: len(self.graph.keys[table])])

    def _load(self, table: str, selector: Selector, start: Key | None) -> list[tuple[Any, ...]]:
        """Up to READ_AHEAD rows of the subject after key `start`, in key order."""
        where = selector.where(table)
        if where is None:
            return []
        t = self.graph.tables[table]
        query = select(*[t.c[c] for c in self._columns(table)]).where(where)
        if start is not None:
            query = query.where(key_after(self.graph, table, start))
        query = query.order_by(*key_columns(self.graph, table)).limit(READ_AHEAD)
        with self.source.connect() as conn:
            return fetch_all(conn, query)

    def _anonymize(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        graph = self.graph
        t = graph.tables[table]
        names = graph.keys[table]
        keys = [row[: len(names)] for row in rows]
        strategies = graph.rules[table].anonymize
        cols = [c for c, _ in strategies]
        with self.source.connect() as conn:
            current = conn.execute(
                select(*key_columns(graph, table), *[t.c[c] for c in cols]).where(
                    key_in(graph, table, keys)
                )
            ).all()
            params = []
            for row in current:
                values = row[len(names) :]
                if all_anonymized(strategies, values):
                    continue
                param = {f"k_{n}": row[i] for i, n in enumerate(names)}
                for (column, strategy), value in zip(strategies, values, strict=True):
                    if not is_anonymized(strategy, value):  # an earlier run did it already
                        where = f"{self.source.name}/{table}.{column}"
                        value = anonymized_value(strategy, self.source.pseudonym_key, where, value)
                    param[f"v_{column}"] = value
                params.append(param)
            if params:
                stmt = (
                    update(t)
                    .where(and_(*[t.c[n] == bindparam(f"k_{n}") for n in names]))
                    .values({c: bindparam(f"v_{c}") for c in cols})
                )
                conn.execute(stmt, params)
        return len(params)

    # --- checkpoint codec -----------------------------------------------------------

    def _decode_key(self, table: str, value: Any) -> Key | None:
        if value is None:
            return None
        return key_from_json(key_columns(self.graph, table), value)

    def _decode_orphans(self, encoded: Mapping[str, Any]) -> dict[str, list[Key]]:
        decoded: dict[str, list[Key]] = {}
        for table, keys in encoded.items():
            columns = key_columns(self.graph, table)
            decoded[table] = [key_from_json(columns, key) for key in keys]
        return decoded


def _fingerprint(identities: Identities, orphans: Any) -> str:
    """Which erasure a read-ahead belongs to (identities and orphaned keys), as a hash."""
    items = sorted((i.type, i.value) for i in identities)
    blob = json.dumps([items, orphans], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
