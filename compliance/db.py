"""The control database: engine, sessions, migrations, and UTC time."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.exc import ProgrammingError as SAProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from compliance import defaults
from compliance.config import Settings
from compliance.errors import ConfigError, PermissionDeniedError, SourceUnavailableError
from compliance.pools import Pool, Tls, connect_reason, engine_options

MIGRATIONS = Path(__file__).parent / "migrations"
PING_IDLE_SECONDS = 10.0  # a pooled connection idle this long is pinged before use
_upgrade_lock = threading.Lock()
_IDLE_SINCE = "idle_since"  # connection record info: monotonic time of its last check-in


def utcnow() -> datetime:
    """The current time, UTC-aware. Call at the edges; pass `now` down to logic."""
    return datetime.now(UTC)


def make_engine(url: str, pool: Pool | None = None, tls: Tls | None = None) -> Engine:
    """An engine for the control database with sensible per-dialect settings, its pool
    and TLS as `compliance.pools` says (SQLite ignores the pool's size and overflow)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError("setting 'database_url' is not a database URL; fix it") from exc
    pool = pool or Pool(defaults.DB_POOL_SIZE, defaults.DB_MAX_OVERFLOW)
    options = engine_options(parsed, pool, tls or Tls(), "control database")
    if url.startswith("sqlite"):
        _ensure_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30}, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    engine = create_engine(url, **options)
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _check_alive)
    return engine


def _checked_in(_dbapi_conn: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _check_alive(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection the server has dropped, so the pool opens a new one.

    Instead of a round trip per checkout (`pool_pre_ping`): a connection that was used a
    moment ago is dead if its socket has something to read while idle (a restarted or
    terminated backend sends its last words and closes), which costs no round trip; one
    idle for `PING_IDLE_SECONDS` or more (a firewall may have dropped it silently) is
    pinged. What goes between this check and the first statement surfaces as
    `SourceUnavailableError` (retryable), and the pool replaces its connections.
    """
    idle_since = record.info.get(_IDLE_SINCE)
    if idle_since is None:
        return  # connected just now
    try:
        if dbapi_conn.closed or _readable(dbapi_conn):
            raise DisconnectionError("the control database closed this connection")
        if time.monotonic() - idle_since >= PING_IDLE_SECONDS:
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_conn.rollback()  # leave it idle, as the pool expects
    except DisconnectionError:
        raise
    except Exception as exc:  # any driver error: the connection is no good
        raise DisconnectionError(f"the control database connection failed: {exc}") from exc


def _readable(dbapi_conn: Any) -> bool:
    """Whether the connection's socket has data (or end of file) waiting, without blocking."""
    fileno = getattr(dbapi_conn, "fileno", None)
    if fileno is None:
        return False  # a driver that does not show its socket: rely on the idle ping
    poller = select.poll()
    poller.register(fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN so concurrent processes queue instead of deadlocking.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@dataclass
class Database:
    """The control database of one installation: an engine and a session factory."""

    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def connect(cls, settings: Settings) -> Database:
        engine = make_engine(settings.control_url, settings.control_pool, settings.control_tls)
        return cls(engine, sessionmaker(engine, expire_on_commit=False))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.sessions() as session:
            try:
                with session.begin():
                    yield session
            except SAOperationalError as exc:
                raise unavailable(exc) from exc
            except SAProgrammingError as exc:
                refusal = refusal_of(exc)
                if refusal is None:
                    raise
                raise refusal from exc

    def upgrade(self) -> None:
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def unavailable(exc: SAOperationalError) -> SourceUnavailableError:
    """The control database could not be reached (libpq's reason, e.g. a TLS refusal) or
    failed a statement (only the error's type: its text may quote values)."""
    return SourceUnavailableError(f"control database unavailable: {connect_reason(exc.orig)}")


def refusal_of(exc: SAProgrammingError) -> PermissionDeniedError | None:
    """The database's own refusal (migration 0002's rules, or a missing grant) as a
    `PermissionDeniedError` of one line; None for any other error."""
    if getattr(exc.orig, "sqlstate", None) != "42501":
        return None
    first = str(exc.orig).strip().splitlines()[0].removeprefix("gdpr: ")
    return PermissionDeniedError(f"the control database refused: {first}")


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the control database schema up to `revision` (idempotent)."""
    from alembic import command

    with _upgrade_lock:
        try:
            command.upgrade(alembic_config(engine), revision)
        except SAOperationalError as exc:
            raise ConfigError(f"cannot migrate the control database: {exc.orig}") from exc


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
