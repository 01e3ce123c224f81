"""Connecting to an application database, and translating its errors at the edge.

`make_source_engine` builds the engine (SQLite paths relative to the manifest, foreign
keys on; PostgreSQL sessions with lock and statement timeouts; pooled connections
pinged before use only after they sat idle), its pool and TLS from the source's manifest
entry (`connection_of`, then `compliance.pools`). `translate_errors` turns
SQLAlchemy/DBAPI errors into `ComplianceError`s whose messages carry table and
constraint names at most, never values.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import url as sa_url

from compliance import defaults
from compliance.errors import ConfigError, SourceUnavailableError, TerminalError, UnsupportedError
from compliance.pools import Pool, Tls, check_tls, connect_reason, engine_options
from compliance.sources.manifest import Spec

IDLE_PING_SECONDS = 30.0  # a pooled connection idle longer is pinged before it is used
_IDLE_SINCE = "gdpr_idle_since"


DEFAULT_POOL = Pool(defaults.SOURCE_POOL_SIZE, defaults.SOURCE_MAX_OVERFLOW)


def connection_of(spec: Spec, base_dir: Path) -> tuple[Pool, Tls]:
    """The pool and TLS keys of a source's manifest entry; TLS files given relative resolve
    against `base_dir` (the manifest's folder). A malformed value names entry and key."""
    pool = Pool(
        spec.integer("pool_size", DEFAULT_POOL.size, minimum=1),
        spec.integer("max_overflow", DEFAULT_POOL.max_overflow, minimum=0),
        spec.integer("pool_recycle_seconds", 0, minimum=0),
        spec.flag("pool_pre_ping"),
    )
    files = {key: _path(spec.string(key), base_dir) for key in ("sslrootcert", "sslcert", "sslkey")}
    tls = Tls(sslmode=spec.string("sslmode"), **files)
    check_tls(tls, spec.path, {key: f"'{key}'" for key in ("sslmode", *files)})
    return pool, tls


def _path(value: str, base_dir: Path) -> str:
    if not value or value == "system" or Path(value).is_absolute():
        return value
    return str(base_dir / value)


def make_source_engine(
    url: str,
    base_dir: Path,
    lock_timeout_ms: int = 0,
    statement_timeout_ms: int = 0,
    *,
    pool: Pool = DEFAULT_POOL,
    tls: Tls | None = None,
    where: str = "source",
) -> Engine:
    """An engine for an application database. Relative SQLite paths resolve against
    `base_dir` (the manifest's folder) and SQLite enforces foreign keys; PostgreSQL
    sessions start with `lock_timeout` and `statement_timeout` set (0: none). `where`
    (the manifest entry) names the source in a pool or TLS error."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("file:"):
            url = f"sqlite:///{base_dir / path}"
    try:
        options = engine_options(sa_url.make_url(url), pool, tls or Tls(), where, "the manifest")
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30}, **options)
            event.listen(engine, "connect", _sqlite_foreign_keys)
            return engine
        if url.startswith("postgresql"):
            options["connect_args"]["options"] = (
                f"-c lock_timeout={lock_timeout_ms} -c statement_timeout={statement_timeout_ms}"
            )
        engine = create_engine(url, **options)
    except (sa_exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"malformed source database URL ({type(exc).__name__})") from exc
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


def ping(dbapi_conn: Any) -> None:
    """One round trip on a pooled connection, leaving no transaction open."""
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("SELECT 1")
    finally:
        cursor.close()
    dbapi_conn.rollback()


def _checked_in(_dbapi_conn: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Ping a pooled connection before use only when it sat idle for a while (the server
    or a proxy may have closed it meanwhile); a busy request's connections are not pinged
    on every checkout. A dead one is replaced (the pool retries the checkout)."""
    since = record.info.get(_IDLE_SINCE)
    if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
        return
    try:
        ping(dbapi_conn)
    except Exception as exc:
        raise sa_exc.DisconnectionError("idle connection is gone") from exc


def _sqlite_foreign_keys(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextmanager
def translate_errors(source: str) -> Iterator[None]:
    """Database errors of source `source` as `ComplianceError`s (retryable when transient)."""
    try:
        yield
    except sa_exc.IntegrityError as exc:
        where = _diag(exc)
        raise UnsupportedError(
            f"source {source}: the database refused a change{where}; a table that "
            "is not in the manifest may still reference the subject's rows: "
            "run `gdpr sources check`"
        ) from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise SourceUnavailableError(
            f"source {source}: database unavailable or timed out ({connect_reason(exc.orig)})"
        ) from exc
    except sa_exc.ProgrammingError as exc:
        raise ConfigError(
            f"source {source}: the database rejected a query{_diag(exc)} "
            f"({type(exc.orig).__name__}); check the manifest and the user's grants"
        ) from exc
    except sa_exc.DBAPIError as exc:
        raise TerminalError(f"source {source}: database error ({type(exc.orig).__name__})") from exc


def _diag(exc: sa_exc.DBAPIError) -> str:
    """Table and constraint names from a psycopg error, if any (never the values)."""
    diag = getattr(exc.orig, "diag", None)
    table = getattr(diag, "table_name", None)
    constraint = getattr(diag, "constraint_name", None)
    parts = [p for p in (f"table {table}" if table else "", constraint or "") if p]
    return f" ({', '.join(parts)})" if parts else ""
