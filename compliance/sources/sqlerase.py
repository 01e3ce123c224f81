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
orphaned shared keys (found by `sqleraseplan.orphans`). Because parents go last, the rows
left to erase can always be found again from what remains, so a killed worker resumes
from the checkpoint alone. Keys of the current table are read ahead (`sqlreadahead`); how
a batch runs and commits is in `sqldelete` and `sqlanonymize`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from compliance.identities import Identities
from compliance.sources.base import Disposition, EraseResult
from compliance.sources.sqlanonymize import anonymize_batch
from compliance.sources.sqldelete import Deleter
from compliance.sources.sqleraseplan import orphans
from compliance.sources.sqlgraph import Graph
from compliance.sources.sqlkeys import Key, key_columns
from compliance.sources.sqlquery import Selector
from compliance.sources.sqlread import subject_count
from compliance.sources.sqlreadahead import ReadAhead
from compliance.sources.sqlvalues import key_from_json, key_to_json

if TYPE_CHECKING:
    from compliance.sources.sql import SqlSource


class Eraser:
    """The erase state machine of one `SqlSource`."""

    def __init__(self, source: SqlSource) -> None:
        self.source = source
        self.deleter = Deleter(source)
        self.read_ahead = ReadAhead(source)

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
            return self._next(checkpoint, index)
        if disposition == Disposition.DELETE:
            columns = self.read_ahead.columns(table)
            last = self.read_ahead.drained
            deleted, detached = self.deleter.delete(table, columns, rows, last=last)
            return self._progress(checkpoint, deleted=deleted, anonymized=detached)
        changed = anonymize_batch(self.source, table, rows)
        after = key_to_json(rows[-1][: len(self.graph.keys[table])])
        self.read_ahead.moved_to(after)
        return self._progress(checkpoint, anonymized=changed, after=after)

    # --- phases ---------------------------------------------------------------------

    def _prepare(self, identities: Identities) -> EraseResult:
        with self.source.connect() as conn:
            found = orphans(self.source, conn, identities)
        encoded = {t: [key_to_json(key) for key in keys] for t, keys in found.items()}
        return EraseResult(done=False, checkpoint={"table": 0, "orphans": encoded})

    def _next(self, checkpoint: Mapping[str, Any], index: int, retained: int = 0) -> EraseResult:
        state = {**checkpoint, "table": index + 1, "after": None}
        self.read_ahead.clear()
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
