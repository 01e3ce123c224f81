"""Erasure in a SQL source: one bounded, idempotent chunk per call, children first.

A run goes through the tables of `Graph.order` (children before parents), one batch of
rows per call, each batch in its own transaction. A call that erased a table to its end
goes on with the next table, while the tables of the call held fewer rows than a batch
between them: a subject with a few rows in many tables is erased in a few calls (each
saved by the runner), not one call per table; no transaction holds more than a batch,
and a call less than two. Each batch is one of:

- ``delete``: keep the rows that rows which stay still point at (anonymised or retained),
  detach or repoint the references to the others (``on_parent_erase``), then delete them;
  once the table is done, check none of the subject's rows were missed before the
  parents, which lead to them, go;
- ``anonymize``: rewrite the anonymised columns (values already anonymised are left as they
  are, so a repeated batch changes nothing);
- ``retain``: count the rows and touch nothing (the plan and receipt name the legal basis).

The first call records which shared rows (addresses...) the subject's rows point at and
nothing else uses: once those rows are deleted, nothing would lead to them any more.
They are deleted in their table's turn, and only if still unused then (one guarded
`DELETE` where it can say so, `Subject.guards_orphans`). That call erases
nothing else, and asks for its checkpoint to be saved before the next (`keep`).

The subject's rows are found once per table (`subject.Subject`) and kept in memory for
the next calls in the same process: a plan made just before (`Eraser.remember`) is the
first call's, and a table's rows read more than `FRESH_SECONDS` before its turn are read
again then. A table with more of the subject's rows than a batch, whose rows are the
subject's by a plain condition, is erased on the server instead, a batch per statement,
its keys never read (`direct`, PostgreSQL); its batches commit asynchronously and are
made durable together before the checkpoint moves past it.

The checkpoint is small JSON: the table index, the last key for tables whose kept rows
stay behind, and the orphaned shared keys. Because parents go last, the rows
left to erase can always be found again from what remains, so a killed worker resumes
from the checkpoint alone. How a batch runs and commits is in `batches`; what an erasure
would do is in `plan`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table

from compliance.errors import ResidualDataError
from compliance.identities import Identities
from compliance.sources.base import Disposition, EraseResult
from compliance.sources.sql import direct
from compliance.sources.sql.batches import BatchCounts, Deleter, anonymize_batch
from compliance.sources.sql.found import Found
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import Key, key_columns, key_from_json, key_to_json
from compliance.sources.sql.plan import orphans
from compliance.sources.sql.read import left_over
from compliance.sources.sql.subject import Subject

FRESH_SECONDS = 5.0  # the subject's rows of a table read longer ago are read again


@dataclass
class _Found:
    """The subject as found for one erasure (its fingerprint), and when."""

    fingerprint: str
    subject: Subject
    at: float


@dataclass
class _Pending:
    """The rows of the current table still to hand out, from one checkpoint position."""

    table: str
    subject: Subject
    after: Any  # the checkpoint's "after" these rows continue from
    rows: Found
    taken: int = 0

    @property
    def drained(self) -> bool:
        """The batch just handed out was the table's last."""
        return self.taken >= len(self.rows)

    def take(self, size: int) -> Found:
        batch = self.rows.rows[self.taken : self.taken + size]
        self.taken += len(batch)
        return Found(self.rows.columns, self.rows.width, batch)


class Eraser:
    """The erase state machine of one source."""

    def __init__(
        self,
        source: SourceHandle,
        first: Callable[[Subject], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.first = first  # run on the subject before anything is erased; rows it deleted
        self.clock = clock
        self.deleter = Deleter(source)
        self._found: _Found | None = None
        self._pending: _Pending | None = None
        self._direct: tuple[str, Subject, int, direct.Direct] | None = None
        self._plain_tables: set[str] | None = None  # tables where a ctid names one row
        self._whole: str | None = None  # table this process ran from its start, none missed

    @property
    def graph(self) -> Graph:
        return self.source.graph

    def remember(self, identities: Identities, subject: Subject) -> None:
        """The subject as an erase plan just found it: an erasure of the same identities
        starting within `FRESH_SECONDS` uses it instead of reading it again."""
        self._found = _Found(_fingerprint(identities, None), subject, self.clock())

    def step(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        """One chunk: a batch of the current table, and then, while the tables it went
        through held fewer rows than `batch_size` between them, the next table too (see
        the module docstring)."""
        try:
            result = self._step(identities, checkpoint, batch_size)
            steps = 1
            while self._goes_on(checkpoint, result, steps, batch_size):
                checkpoint = result.checkpoint
                result = result.then(self._step(identities, checkpoint, batch_size))
                steps += 1
            return result
        except BaseException:
            self._pending = None  # what was handed out may not have been erased
            self._direct = None
            self._found = None
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
        subject = self._subject(identities, checkpoint.get("orphans") or {})
        disposition = self.graph.rules[table].on_erase
        if disposition == Disposition.RETAIN:
            with self.source.connect() as conn:
                retained = len(subject.own(conn, table))
            return self._next(checkpoint, index, retained=retained)
        if disposition == Disposition.DELETE:
            run = self._direct_run(subject, table, checkpoint.get("after"), batch_size)
            if run is not None:
                return self._direct_step(run, checkpoint, index, batch_size)
        pending = self._batches(subject, table, checkpoint.get("after"))
        rows = pending.take(batch_size)
        if not rows:
            if disposition == Disposition.DELETE and self._whole != table:
                self._check_gone(subject, table)
            return self._next(checkpoint, index)
        after = key_to_json(rows.rows[-1][: rows.width])
        if disposition == Disposition.DELETE:
            counts = self.deleter.delete(
                subject, table, rows.columns, rows.rows, last=pending.drained
            )
            if counts.missed:
                self._whole = None
            if not self.graph.keep_edges(table):
                return self._progress(checkpoint, counts)  # what is left starts the table
            pending.after = after  # kept rows stay: go on after them
            return self._progress(checkpoint, counts, after=after)
        changed = anonymize_batch(self.source, table, rows.rows)
        pending.after = after
        return self._progress(checkpoint, BatchCounts(anonymized=changed), after=after)

    def _goes_on(
        self, before: Mapping[str, Any], result: EraseResult, steps: int, batch_size: int
    ) -> bool:
        """Whether the call goes on after `steps` batches that led from checkpoint `before`
        to `result`: not after the first call (its orphans are saved first), nor once the
        call handled a batch of rows (a table with more keeps its own calls); a call makes
        at most two steps per table (a batch and the move on)."""
        if result.done or "table" not in before or steps >= 2 * len(self.graph.order) + 2:
            return False
        return result.deleted + result.anonymized + result.retained < batch_size

    def _direct_run(
        self, subject: Subject, table: str, after: Any, batch_size: int
    ) -> direct.Direct | None:
        """The server-side erasure of `table` under way, or started now when the table
        suits it and holds more than a batch of the subject's rows (see `direct`)."""
        held = self._direct
        if held is not None and held[:3] == (table, subject, batch_size):
            return held[3]
        pending = self._pending
        if pending is not None and pending.table == table and pending.subject is subject:
            return None  # found to fit the key lists
        if after is not None or not direct.suits(self.graph, subject, table):
            return None
        since = self.clock() - FRESH_SECONDS
        with self.source.connect() as conn:
            run = direct.start(
                self.source.name, conn, subject, table, batch_size, since, self._plain
            )
        if run is not None:
            self._direct = (table, subject, batch_size, run)
        return run

    def _direct_step(
        self, run: direct.Direct, checkpoint: Mapping[str, Any], index: int, batch_size: int
    ) -> EraseResult:
        deleted = run.step(self.deleter, batch_size)
        if not run.done:
            return self._progress(checkpoint, BatchCounts(deleted=deleted))
        self.deleter.flush()  # every batch of the table durable before the checkpoint moves on
        return self._next(checkpoint, index, deleted=deleted)

    def _plain(self, conn: Connection, t: Table) -> bool:
        """Whether a row's address names one row of `t` (`direct.plain_tables`): asked
        once for every table of the source."""
        if self._plain_tables is None:
            self._plain_tables = direct.plain_tables(conn, list(self.graph.tables.values()))
        return t.name in self._plain_tables

    def _batches(self, subject: Subject, table: str, after: Any) -> _Pending:
        """The rows of `table` still to erase from checkpoint position `after`."""
        pending = self._pending
        if (
            pending is None
            or pending.table != table
            or pending.subject is not subject
            or pending.after != after
        ):
            with self.source.connect() as conn:
                found = subject.at_turn(conn, table, self.clock() - FRESH_SECONDS)
            pending = _Pending(table, subject, after, found.after(self._decode_key(table, after)))
            self._pending = pending
        return pending

    def _check_gone(self, subject: Subject, table: str) -> None:
        """Before the parents go (after which these rows could not be found again), the
        table must hold none of the subject's rows but those kept for others. Skipped
        when this process ran the whole table and every batch deleted all it was given."""
        with self.source.connect() as conn:
            left = left_over(conn, subject, table, subject.fresh(conn, table))
        if left:
            raise ResidualDataError(
                f"source {self.source.name}: {left} row(s) of {table} are still there after "
                "its delete batches (written meanwhile, or a key that does not compare equal "
                "when read back); retry the request, and check the table's key if it repeats"
            )

    # --- the subject ----------------------------------------------------------------

    def _subject(self, identities: Identities, encoded: Mapping[str, Any]) -> Subject:
        """The subject of this erasure, as found before in this process if it was."""
        fingerprint = _fingerprint(identities, encoded)
        found = self._found
        if found is None or found.fingerprint != fingerprint:
            orphaned = self._decode_orphans(encoded)
            subject = Subject(self.graph, identities, orphaned, clock=self.clock)
            found = self._found = _Found(fingerprint, subject, self.clock())
        return found.subject

    def _prepare(self, identities: Identities) -> EraseResult:
        """Run `first` (the source deletes the subject's rows in partitions detached for
        retention), and find the orphans."""
        found = self._found
        recent = (
            found is not None
            and found.fingerprint == _fingerprint(identities, None)
            and self.clock() - found.at <= FRESH_SECONDS
        )
        plain = found.subject.plain if found is not None and recent else None
        subject = found.subject if found is not None and recent else None
        if plain is None:
            plain = Subject(self.graph, identities, clock=self.clock)
        early = self.first(plain) if self.first is not None else 0
        if subject is None:
            with self.source.connect() as conn:
                subject = plain.with_orphans(orphans(conn, plain))
        encoded = {t: [key_to_json(key) for key in keys] for t, keys in subject.orphans.items()}
        self._found = _Found(_fingerprint(identities, encoded), subject, self.clock())
        self._whole = self._table_at(0)
        state = {"table": 0, "orphans": encoded}
        return EraseResult(done=False, checkpoint=state, deleted=early, keep=any(encoded.values()))

    # --- phases ---------------------------------------------------------------------

    def _next(
        self, checkpoint: Mapping[str, Any], index: int, retained: int = 0, deleted: int = 0
    ) -> EraseResult:
        state = {**checkpoint, "table": index + 1, "after": None}
        self._whole = self._table_at(index + 1)
        self._pending = None
        self._direct = None
        self.deleter.release()
        done = index + 1 >= len(self.graph.order)
        if done:
            state.pop("orphans", None)  # nothing left to look up: drop the keys
            self._found = None
        return EraseResult(done=done, checkpoint=state, deleted=deleted, retained=retained)

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

    def _decode_key(self, table: str, value: Any) -> Key | None:
        if value is None:
            return None
        return key_from_json(key_columns(self.graph, table), value)


def _fingerprint(identities: Identities, orphaned: Any) -> str:
    """Which erasure a subject belongs to (identities and orphaned keys), as a hash."""
    items = sorted((i.type, i.value) for i in identities)
    blob = json.dumps([items, orphaned], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
