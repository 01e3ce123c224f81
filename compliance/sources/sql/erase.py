"""Erasure in a SQL source: one bounded, idempotent batch per call, children first.

A run goes through the tables of `Graph.order` (children before parents), one batch of
rows per call, each batch in its own transaction:

- ``delete``: keep the rows that rows which stay still point at (anonymised or retained),
  detach or repoint the references to the others (``on_parent_erase``), then delete them;
  once the table is done, check none of the subject's rows were missed before the
  parents, which lead to them, go;
- ``anonymize``: rewrite the anonymised columns (values already anonymised are left as they
  are, so a repeated batch changes nothing);
- ``retain``: count the rows and touch nothing (the plan and receipt name the legal basis).

The first call records which shared rows (addresses...) the subject's rows point at and
nothing else uses: once those rows are deleted, nothing would lead to them any more.
They are deleted in their table's turn, and only if still unreferenced then.

The checkpoint is small JSON: the table index, the last key for anonymisation, and the
orphaned shared keys (found by `orphans` below). Because parents go last, the rows
left to erase can always be found again from what remains, so a killed worker resumes
from the checkpoint alone. Keys of the current table are read ahead (`batches.ReadAhead`);
how a batch runs and commits is in `batches`; what an erasure would do is in `plan`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select

from compliance.errors import ResidualDataError
from compliance.identities import Identities
from compliance.sources.base import Disposition, EraseResult
from compliance.sources.sql.batches import BatchCounts, Deleter, ReadAhead, anonymize_batch
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import Key, key_columns, key_from_json, key_to_json
from compliance.sources.sql.query import Selector
from compliance.sources.sql.read import left_over, subject_count


class Eraser:
    """The erase state machine of one source."""

    def __init__(self, source: SourceHandle) -> None:
        self.source = source
        self.deleter = Deleter(source)
        self.read_ahead = ReadAhead(source)
        self._whole: str | None = None  # table this process ran from its start, none missed

    @property
    def graph(self) -> Graph:
        return self.source.graph

    def step(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        try:
            return self._step(identities, checkpoint, batch_size)
        except BaseException:
            self.read_ahead.clear()  # what was read ahead may not have been erased
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
                retained = subject_count(self.graph, conn, table, selector)
            return self._next(checkpoint, index, retained=retained)
        scope = (table, _fingerprint(identities, encoded))
        rows = self.read_ahead.batch(scope, selector, checkpoint.get("after"), batch_size)
        if not rows:
            if disposition == Disposition.DELETE and self._whole != table:
                self._check_gone(table, selector)
            return self._next(checkpoint, index)
        after = key_to_json(rows[-1][: len(self.graph.keys[table])])
        if disposition == Disposition.DELETE:
            columns = self.read_ahead.columns(table)
            last = self.read_ahead.drained
            counts = self.deleter.delete(selector, table, columns, rows, last=last)
            if counts.missed:
                self._whole = None
            if not self.graph.keep_edges(table):
                return self._progress(checkpoint, counts)  # what is left starts the table
            self.read_ahead.moved_to(after)  # kept rows stay: go on after them
            return self._progress(checkpoint, counts, after=after)
        changed = anonymize_batch(self.source, table, rows)
        self.read_ahead.moved_to(after)
        return self._progress(checkpoint, BatchCounts(anonymized=changed), after=after)

    def _check_gone(self, table: str, selector: Selector) -> None:
        """Before the parents go (after which these rows could not be found again), the
        table must hold none of the subject's rows but those kept for others. Skipped
        when this process ran the whole table and every batch deleted all it was given."""
        with self.source.connect() as conn:
            left = left_over(self.graph, conn, table, selector)
        if left:
            raise ResidualDataError(
                f"source {self.source.name}: {left} row(s) of {table} are still there after "
                "its delete batches (written meanwhile, or a key that does not compare equal "
                "when read back); retry the request, and check the table's key if it repeats"
            )

    # --- phases ---------------------------------------------------------------------

    def _prepare(self, identities: Identities) -> EraseResult:
        with self.source.connect() as conn:
            found = orphans(self.source, conn, identities)
        encoded = {t: [key_to_json(key) for key in keys] for t, keys in found.items()}
        self._whole = self._table_at(0)
        return EraseResult(done=False, checkpoint={"table": 0, "orphans": encoded})

    def _next(self, checkpoint: Mapping[str, Any], index: int, retained: int = 0) -> EraseResult:
        state = {**checkpoint, "table": index + 1, "after": None}
        self._whole = self._table_at(index + 1)
        self.read_ahead.clear()
        self.deleter.release()
        done = index + 1 >= len(self.graph.order)
        if done:
            state.pop("orphans", None)  # nothing left to look up: drop the keys
        return EraseResult(done=done, checkpoint=state, retained=retained)

    def _progress(
        self, checkpoint: Mapping[str, Any], counts: BatchCounts, after: list[Any] | None = None
    ) -> EraseResult:
        state = {**checkpoint, "after": after}
        return EraseResult(
            done=False,
            checkpoint=state,
            deleted=counts.deleted,
            anonymized=counts.anonymized,
            retained=counts.retained,
            detached=counts.detached,
            others=counts.others,
        )

    def _table_at(self, index: int) -> str | None:
        return self.graph.order[index] if index < len(self.graph.order) else None

    # --- checkpoint codec -----------------------------------------------------------

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


def orphans(source: SourceHandle, conn: Connection, identities: Identities) -> dict[str, list[Key]]:
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
