"""The SQL connector: one database (any SQLAlchemy dialect; PostgreSQL and SQLite tested).

The manifest says which tables hold personal data and how (see `sqlmanifest`); the live
schema supplies keys and foreign keys (see `sqlgraph`). Reads and writes use SQLAlchemy
Core with bound parameters only. Erasure is in `sqlerase`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, func, select
from sqlalchemy import exc as sa_exc

from compliance.errors import (
    ConfigError,
    SourceUnavailableError,
    TerminalError,
    UnsupportedError,
    ValidationError,
)
from compliance.identities import Identities, Identity, parse_identity
from compliance.sources.base import (
    Action,
    Disposition,
    EraseResult,
    ExportItem,
    LocationPlan,
    Residue,
    RowsItem,
    SourcePlan,
)
from compliance.sources.check import Gap, looks_personal
from compliance.sources.manifest import Spec
from compliance.sources.registry import LoadContext
from compliance.sources.sqlgraph import Graph, build_graph
from compliance.sources.sqlkeys import key_columns
from compliance.sources.sqlmanifest import SqlManifest, parse_sql_manifest
from compliance.sources.sqlquery import Selector
from compliance.sources.sqlrules import qualified
from compliance.sources.sqlvalues import all_anonymized
from compliance.sources.templating import expand_env

MAX_RESOLVE_ROUNDS = 10
MAX_IDENTITIES = 1000  # more means an identity column links different people
STREAM_ROWS = 1000


def from_manifest(name: str, spec: Spec, ctx: LoadContext) -> SqlSource:
    """The registry's factory for ``kind = "sql"``."""
    url = expand_env(spec.string("url", required=True), ctx.environ, f"{spec.path}.url")
    manifest = parse_sql_manifest(spec, url)
    source = SqlSource(
        name,
        make_source_engine(
            url, ctx.base_dir, ctx.settings.lock_timeout_ms, ctx.settings.statement_timeout_ms
        ),
        manifest,
        pseudonym_key=ctx.pseudonym_key,
        entry=spec.path,
    )
    if ctx.connect:
        try:
            _ = source.graph
        except BaseException:
            source.close()
            raise
    return source


def make_source_engine(
    url: str, base_dir: Path, lock_timeout_ms: int = 0, statement_timeout_ms: int = 0
) -> Engine:
    """An engine for an application database. Relative SQLite paths resolve against
    `base_dir` (the manifest's folder) and SQLite enforces foreign keys; PostgreSQL
    sessions start with `lock_timeout` and `statement_timeout` set (0: none)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("file:"):
            url = f"sqlite:///{base_dir / path}"
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_foreign_keys)
            return engine
        args = {}
        if url.startswith("postgresql"):
            options = (
                f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms}"
            )
            args["options"] = options
        return create_engine(
            url, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=args
        )
    except (sa_exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"malformed source database URL ({type(exc).__name__})") from exc


def _sqlite_foreign_keys(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


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
    ) -> None:
        self.name = name
        self.engine = engine
        self.manifest = manifest
        self.pseudonym_key = pseudonym_key
        self.entry = entry or f"sources.{name}"
        self._graph: Graph | None = None
        self._eraser: Any = None

    def __repr__(self) -> str:
        return f"SqlSource(name={self.name!r}, dialect={self.engine.dialect.name!r})"

    # --- schema ---------------------------------------------------------------------

    @property
    def graph(self) -> Graph:
        """The reference graph, built (and the manifest checked) on first use."""
        if self._graph is None:
            metadata = MetaData()
            with self.connect() as conn:
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

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Translate database errors at the connector's edge (messages carry no values)."""
        try:
            yield
        except sa_exc.IntegrityError as exc:
            where = _diag(exc)
            raise UnsupportedError(
                f"source {self.name}: the database refused a change{where}; a table that "
                "is not in the manifest may still reference the subject's rows: "
                "run `gdpr sources check`"
            ) from exc
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise SourceUnavailableError(
                f"source {self.name}: database unavailable or timed out ({type(exc.orig).__name__})"
            ) from exc
        except sa_exc.ProgrammingError as exc:
            raise ConfigError(
                f"source {self.name}: the database rejected a query{_diag(exc)} "
                f"({type(exc.orig).__name__}); check the manifest and the user's grants"
            ) from exc
        except sa_exc.DBAPIError as exc:
            raise TerminalError(
                f"source {self.name}: database error ({type(exc.orig).__name__})"
            ) from exc

    def close(self) -> None:
        if self._eraser is not None:
            self._eraser.deleter.discard()  # a connection held between delete batches
        self.engine.dispose()

    # --- DataSource -----------------------------------------------------------------

    def resolve(self, identities: Identities) -> Identities:
        """Identities linked to the given ones through rows they match, to a fixpoint."""
        current = identities
        for _ in range(MAX_RESOLVE_ROUNDS):
            found = set(current.items)
            with self.connect() as conn:
                for table in self.graph.rules:
                    found.update(self._linked(conn, table, current))
            if len(found) > MAX_IDENTITIES:
                raise UnsupportedError(
                    f"source {self.name}: the subject's identities grow past "
                    f"{MAX_IDENTITIES}; an identity column links different people "
                    "(set resolve = false on it)"
                )
            if found == set(current.items):
                return current
            current = Identities(frozenset(found))
        raise UnsupportedError(
            f"source {self.name}: identities still growing after {MAX_RESOLVE_ROUNDS} rounds"
        )

    def _linked(self, conn: Connection, table: str, identities: Identities) -> set[Identity]:
        selector = Selector(self.graph, identities)
        match = selector.identity_match(table, resolving=True)
        if match is None:
            return set()
        idents = [i for i in self.graph.rules[table].identities if i.resolve]
        t = self.graph.tables[table]
        query = select(*[t.c[i.column] for i in idents]).where(match).distinct()
        found = set()
        for row in conn.execute(query.limit(MAX_IDENTITIES + 1)):
            for ident, value in zip(idents, row, strict=True):
                if value is None:
                    continue
                try:
                    found.add(parse_identity(ident.type, str(value)))
                except ValidationError:
                    continue  # a malformed value in the data cannot be a subject's identity
        return found

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        """Counts per table of what `action` would touch; writes nothing."""
        with self.connect() as conn:
            if action == Action.ERASE:
                from compliance.sources.sqlerase import erase_plan

                locations = erase_plan(self, conn, identities)
            else:
                locations = self._export_plan(conn, identities)
        return SourcePlan(self.name, self.kind, tuple(locations))

    def _export_plan(self, conn: Connection, identities: Identities) -> list[LocationPlan]:
        selector = Selector(self.graph, identities, "referenced")
        found = []
        for table in reversed(self.graph.order):
            count = self.count(conn, table, selector)
            if count:
                found.append(LocationPlan(table, Disposition.EXPORT, count))
        return found

    def count(self, conn: Connection, table: str, selector: Selector) -> int:
        where = selector.where(table)
        if where is None:
            return 0
        t = self.graph.tables[table]
        return int(conn.execute(select(func.count()).select_from(t).where(where)).scalar_one())

    def export(self, identities: Identities) -> Iterator[ExportItem]:
        """One `RowsItem` per table holding the subject's rows, parents first; rows
        stream from a server-side cursor while the item is consumed."""
        selector = Selector(self.graph, identities, "referenced")
        with self.connect() as conn:
            present = [t for t in reversed(self.graph.order) if self.count(conn, t, selector)]
        for table in present:
            rule = self.graph.rules[table]
            rows = self._stream(table, selector)
            yield RowsItem(self.name, table, rows, meta=rule.art15)

    def _stream(self, table: str, selector: Selector) -> Iterator[Mapping[str, Any]]:
        t = self.graph.tables[table]
        excluded = set(self.graph.rules[table].export_exclude)
        columns = [c for c in t.columns if c.name not in excluded]
        query = (
            select(*columns).where(selector.rows(table)).order_by(*key_columns(self.graph, table))
        )
        with self.connect() as conn:
            result = conn.execution_options(yield_per=STREAM_ROWS).execute(query)
            for row in result.mappings():
                yield dict(row)

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        """One batch of erasure, children before parents; see `sqlerase`."""
        from compliance.sources.sqlerase import Eraser

        if self._eraser is None:
            self._eraser = Eraser(self)
        result: EraseResult = self._eraser.step(identities, checkpoint, batch_size)
        return result

    def verify(self, identities: Identities) -> list[Residue]:
        """Rows still there for the subject: in deleted tables any row; in anonymised
        tables rows whose anonymised columns still hold a value. Retained rows are not
        residue (the plan and receipt report them with their legal basis)."""
        selector = Selector(self.graph, identities)
        residues = []
        with self.connect() as conn:
            for table in self.graph.order:
                rule = self.graph.rules[table]
                if rule.on_erase == Disposition.DELETE:
                    count = self.count(conn, table, selector)
                elif rule.on_erase == Disposition.ANONYMIZE:
                    count = self._not_anonymized(conn, table, selector)
                else:
                    continue
                if count:
                    residues.append(Residue(f"{self.name}/{table}", count))
        return residues

    def _not_anonymized(self, conn: Connection, table: str, selector: Selector) -> int:
        where = selector.where(table)
        if where is None:
            return 0
        t = self.graph.tables[table]
        strategies = self.graph.rules[table].anonymize
        query = select(*[t.c[c] for c, _ in strategies]).where(where)
        count = 0
        for row in conn.execution_options(yield_per=STREAM_ROWS).execute(query):
            if not all_anonymized(strategies, row):
                count += 1
        return count

    # --- sources check --------------------------------------------------------------

    def gaps(self) -> list[Gap]:
        """Tables outside the manifest that point at subject data or look personal."""
        graph = self.graph
        found = []
        for name, table in sorted(graph.schema_tables.items()):
            if name in graph.rules or name in self.manifest.ignore_tables:
                continue
            refs = sorted(
                {e.parent for e in graph.foreign if e.child == name and e.parent in graph.reachable}
            )
            if refs:
                cols = tuple(c for e in graph.foreign if e.child == name for c in e.child_cols)
                reason = f"references {', '.join(refs)} (subject data) but is not in the manifest"
                found.append(Gap(self.name, name, reason, cols))
            personal = tuple(c.name for c in table.columns if looks_personal(c.name))
            if personal:
                reason = f"columns that look personal: {', '.join(personal)}"
                found.append(Gap(self.name, name, reason, personal))
        return found


def _diag(exc: sa_exc.DBAPIError) -> str:
    """Table and constraint names from a psycopg error, if any (never the values)."""
    diag = getattr(exc.orig, "diag", None)
    table = getattr(diag, "table_name", None)
    constraint = getattr(diag, "constraint_name", None)
    parts = [p for p in (f"table {table}" if table else "", constraint or "") if p]
    return f" ({', '.join(parts)})" if parts else ""
