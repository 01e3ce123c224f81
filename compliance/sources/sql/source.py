"""The SQL connector: one database (any SQLAlchemy dialect; PostgreSQL and SQLite tested).

The manifest says which tables hold personal data and how (see `manifest`); the live
schema supplies keys and foreign keys (see `graph`), reflected once per source. Reads
and writes use SQLAlchemy Core with bound parameters only; a request finds the subject's
rows once per table and binds their keys as lists (`subject`). Connecting and error
translation are in `engine`, reads in `read`, plans in `plan`, the erasure in `erase`,
its batches in `batches`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, MetaData

from compliance import defaults
from compliance.errors import ConfigError
from compliance.identities import Identities
from compliance.pools import Tls
from compliance.retention.policy import (
    Held,
    Limits,
    Policy,
    PolicyKind,
    PolicyPlan,
    PurgeResult,
    Status,
    SubjectBatch,
)
from compliance.sources.base import (
    Action,
    Art15,
    EraseResult,
    ExportItem,
    Residue,
    RowsItem,
    SourcePlan,
)
from compliance.sources.check import Gap
from compliance.sources.manifest import Spec
from compliance.sources.registry import LoadContext
from compliance.sources.sql import batch, coverage, partition_sweep, retention
from compliance.sources.sql.engine import connection_of, make_source_engine, translate_errors
from compliance.sources.sql.erase import FRESH_SECONDS, Eraser
from compliance.sources.sql.graph import Graph, build_graph
from compliance.sources.sql.manifest import SqlManifest, parse_sql_manifest, qualified
from compliance.sources.sql.plan import erase_plan, export_plan, orphans
from compliance.sources.sql.policies import policy_of
from compliance.sources.sql.read import MAX_RESOLVE_ROUNDS, residues, resolve, rows_of
from compliance.sources.sql.subject import Subject
from compliance.sources.templating import expand_env

_SKIPPED_EXPRESSION_INDEX = "Skipped unsupported reflection of expression-based index"


def from_manifest(name: str, spec: Spec, ctx: LoadContext) -> SqlSource:
    """The registry's factory for ``kind = "sql"``."""
    url = expand_env(spec.string("url", required=True), ctx.environ, f"{spec.path}.url")
    pool, tls = connection_of(spec, ctx.base_dir)
    manifest = parse_sql_manifest(spec, url)
    source = SqlSource(
        name,
        make_source_engine(
            url,
            ctx.base_dir,
            ctx.settings.lock_timeout_ms,
            ctx.settings.statement_timeout_ms,
            pool=pool,
            tls=tls,
            where=spec.path,
        ),
        manifest,
        pseudonym_key=ctx.pseudonym_key,
        entry=spec.path,
        retention_batch=ctx.settings.retention_batch_size,
        tls=tls,
    )
    if ctx.connect:
        try:
            _ = source.graph
        except BaseException:
            source.close()
            raise
    return source


class SqlSource:
    """A SQL database holding personal data; implements `DataSource`."""

    kind = "sql"

    def __init__(
        self,
        name: str,
        engine: Engine,
        manifest: SqlManifest,
        *,
        pseudonym_key: bytes,
        entry: str = "",
        retention_batch: int = defaults.RETENTION_BATCH_SIZE,
        tls: Tls | None = None,
    ) -> None:
        self.name = name
        self.engine = engine
        self.manifest = manifest
        self.pseudonym_key = pseudonym_key
        self.entry = entry or f"sources.{name}"
        self._graph: Graph | None = None
        self._eraser: Eraser | None = None
        self._policies: tuple[Policy, ...] | None = None
        self.retention_batch = retention_batch  # keys per batch a retention plan shows
        self.tls = tls or Tls()  # as the manifest gives it (the URL may say more)
        self._warm: dict[Identities, Subject] = {}  # a batch's exports, read together
        self._resolved = batch.Kept(FRESH_SECONDS)  # identity tables' rows resolve read

    def __repr__(self) -> str:
        return f"SqlSource(name={self.name!r}, dialect={self.engine.dialect.name!r})"

    # --- schema ---------------------------------------------------------------------

    @property
    def graph(self) -> Graph:
        """The reference graph, built (and the manifest checked) on first use."""
        if self._graph is None:
            metadata = MetaData()
            with self.connect() as conn, warnings.catch_warnings():
                # SQLite: an expression index (lower(email), as `gdpr sources advise`
                # suggests) is skipped by reflection; the graph needs only columns and keys
                warnings.filterwarnings("ignore", message=_SKIPPED_EXPRESSION_INDEX)
                metadata.reflect(conn, schema=self.manifest.schema)
            for name in self.manifest.ignore_tables:
                if qualified(self.manifest.schema, name) not in metadata.tables:
                    raise ConfigError(f"{self.entry}.ignore_tables: no table {name!r}")
            self._graph = build_graph(
                self.manifest.rules,
                metadata,
                self.manifest.schema,
                self.entry,
                self.engine.dialect.name,
            )
        return self._graph

    # --- connections ----------------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection in a transaction; database errors come out as `ComplianceError`s
        (retryable when transient). PostgreSQL sessions carry the lock and statement
        timeouts from the moment they connect (see `make_source_engine`)."""
        with self.errors(), self.engine.begin() as conn:
            yield conn

    def errors(self) -> AbstractContextManager[None]:
        """Translate database errors at the connector's edge (messages carry no values)."""
        return translate_errors(self.name)

    def location_facts(self) -> Mapping[str, Art15]:
        """Per table, the Art. 15 facts the manifest declares (`Describing`)."""
        return {rule.name: rule.art15 for rule in self.manifest.rules}

    def close(self) -> None:
        if self._eraser is not None:
            self._eraser.deleter.discard()  # a connection held between delete batches
        self.engine.dispose()

    # --- DataSource -----------------------------------------------------------------

    def identity_types(self) -> frozenset[str]:
        """The types of the manifest's identity columns (a table without any adds none)."""
        return frozenset(c.type for rule in self.manifest.rules for c in rule.identities)

    def resolve(self, identities: Identities) -> Identities:
        """Identities linked to the given ones through rows they match, to a fixpoint.
        Read as a batch of one (`resolve_many`), so the rows of tables looked up by
        identity alone serve the erase plan that follows; alone when that cannot settle."""
        found = self.resolve_many([identities])[0]
        return resolve(self, identities) if found is None else found

    def resolve_many(self, given: Sequence[Identities]) -> list[Identities | None]:
        """`resolve` for each of several subjects, one read per table and round for all
        of them (`batch`); None for a subject that must be resolved alone. The rows it
        read in full on the way are kept for `warm`, keyed by the identities found."""
        began = self._resolved.clock()
        with self.connect() as conn:
            found = batch.resolve_many(conn, self.graph, given, MAX_RESOLVE_ROUNDS)
        self._resolved.keep(found, began)
        return [None if r is None else r.identities for r in found]

    def warm(self, subjects: Sequence[Identities]) -> None:
        """Read the rows of these subjects' exports together (one read per table for all
        of them, `batch`), for `export` to take; `cool` forgets what was not taken."""
        found = [Subject(self.graph, identities, full=True) for identities in subjects]
        for subject in found:
            self._take_resolved(subject)
        with self.connect() as conn:
            batch.read_own(conn, self.graph, found)
            batch.read_shared(conn, self.graph, found)
        self._warm.update((subject.identities, subject) for subject in found)

    def cool(self) -> None:
        self._warm.clear()
        self._resolved.clear()

    def _take_resolved(self, subject: Subject) -> None:
        """Give `subject` the identity tables' rows a resolve of its identities just read."""
        kept = self._resolved.take(subject.identities)
        if kept is not None:
            at, own = kept
            for table, rows in own.items():
                subject.remember_own(table, rows, at=at)

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        """Counts per table of what `action` would touch; writes nothing. The subject's
        rows an erase plan found serve the erasure that starts right after it."""
        plain = Subject(self.graph, identities)
        self._take_resolved(plain)
        with self.connect() as conn:
            if action == Action.ERASE:
                subject = plain.with_orphans(orphans(conn, plain))
                locations = erase_plan(conn, subject)
            else:
                locations = export_plan(conn, plain)
        if action == Action.ERASE:
            self.eraser.remember(identities, subject)
        return SourcePlan(self.name, self.kind, tuple(locations))

    def export(self, identities: Identities) -> Iterator[ExportItem]:
        """Per table holding the subject's rows, parents first: a `RowsItem` of the
        subject's rows, and one (``shared``) of rows shared with other people; never a
        row of another subject. Each table is read once, in one transaction (or was,
        with the rest of a batch, `warm`); rows too many to keep from that read are read
        again by key when the item is consumed."""
        subject = self._warm.pop(identities, None) or Subject(self.graph, identities, full=True)
        wanted = []
        with self.connect() as conn:
            for table in reversed(self.graph.order):
                for shared, found in (
                    (False, subject.mine(conn, table)),
                    (True, subject.shared(conn, table)),
                ):
                    if found:
                        wanted.append((table, shared, found))
        for table, shared, found in wanted:
            rule = self.graph.rules[table]
            name = f"{table}.shared" if shared else table
            yield RowsItem(
                self.name, name, rows_of(self, table, found), meta=rule.art15, shared=shared
            )

    @property
    def eraser(self) -> Eraser:
        if self._eraser is None:
            schema = self.manifest.schema
            self._eraser = Eraser(
                self, first=lambda subject: partition_sweep.erase_detached(self, schema, subject)
            )
        return self._eraser

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        """One batch of erasure, children before parents; see `erase`."""
        return self.eraser.step(identities, checkpoint, batch_size)

    def verify(self, identities: Identities) -> list[Residue]:
        """Rows still there for the subject: in deleted tables any row; in anonymised
        tables rows whose anonymised columns still hold a value. Retained rows are not
        residue (the plan and receipt report them with their legal basis)."""
        return residues(self, identities)

    # --- retention (see `retention`) ------------------------------------------------

    def retention_policies(self) -> tuple[Policy, ...]:
        """The tables' retention policies; a subject-scope one erases whole subjects."""
        if self._policies is None:
            found = []
            for rule in self.manifest.rules:
                for entry in rule.retention:
                    kind = self._policy_kind(rule.name, entry.scope, entry.column)
                    found.append(
                        policy_of(self.name, rule.name, entry, len(rule.retention) > 1, kind)
                    )
            self._policies = tuple(found)
        return self._policies

    def _policy_kind(self, table: str, scope: str, column: str) -> PolicyKind:
        if scope == "subject":
            return PolicyKind.SUBJECTS
        return PolicyKind.ROWS

    def retention_plan(self, policy: Policy, cutoff: datetime, held: Held) -> PolicyPlan:
        """Counts of what a sweep would do; on a range-partitioned table (PostgreSQL)
        the partitions it would detach are named in the plan's note."""
        found = retention.plan_rows(self, policy, cutoff, held, self.retention_batch)
        if policy.kind != PolicyKind.ROWS:
            return found
        with self.connect() as conn:
            if not partition_sweep.applies(conn, self.manifest.schema, policy):
                return found
            parts, rows, kept = partition_sweep.due(
                conn, self.graph, self.manifest.schema, policy, cutoff, held
            )
        note = f"{len(parts)} partition(s) of {rows} row(s) would be detached" + (
            f", {kept} kept attached for a legal hold" if kept else ""
        )
        return replace(found, note=f"{note}; {found.note}")

    def purge(
        self,
        policy: Policy,
        cutoff: datetime,
        cursor: Mapping[str, Any],
        limits: Limits,
        held: Held,
    ) -> PurgeResult:
        """Delete expired rows in key-range batches (see `retention`); on a
        range-partitioned table whole partitions are detached first (`partition_sweep`)."""
        work = partition_sweep.PartitionWork()
        if "partitions" not in cursor:
            with self.connect() as conn:
                partitioned = partition_sweep.applies(conn, self.manifest.schema, policy)
            if partitioned:
                work = partition_sweep.sweep(
                    self.engine, self.graph, self.manifest.schema, policy, cutoff, held, self.name
                )
            cursor = {**cursor, "partitions": "done"}
        result = retention.purge_rows(self, policy, cutoff, cursor, limits, held)
        return replace(
            result,
            cursor={**result.cursor, "partitions": "done"},
            detached=work.detached,
            dropped=work.dropped,
        )

    def retention_status(self, policy: Policy, now: datetime, held: Held) -> Status:
        return retention.status_rows(self, policy, now, held)

    def split(self, policy: Policy, parts: int, min_rows: int) -> list[dict[str, Any]]:
        """Cursors of key ranges for workers to sweep side by side (see `retention`)."""
        return retention.split_ranges(self, policy, parts, min_rows)

    def due_subjects(
        self, policy: Policy, cutoff: datetime, cursor: Mapping[str, Any], limit: int
    ) -> SubjectBatch:
        """Subjects of a subject-scope policy whose row is past `cutoff`, from `cursor`."""
        return retention.due_subjects(self, policy, cutoff, cursor, limit)

    def find_subjects(self, pseudonyms: frozenset[str]) -> Identities:
        """The identities here whose pseudonyms are `pseudonyms` (held subjects), with
        everything this source links to them."""
        found = retention.find_subjects(self, pseudonyms, self.pseudonym_key)
        return self.resolve(found) if found else found

    # --- sources check --------------------------------------------------------------

    def gaps(self) -> list[Gap]:
        """Tables outside the manifest that hold personal data; see `coverage`."""
        return coverage.gaps(self)
