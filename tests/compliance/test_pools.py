"""The control database's pool and TLS settings: they reach the engine, a refused TLS
connection is one line naming the database, TLS beside a URL never contradicts it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings, load_settings
from compliance.db import Database
from compliance.errors import ConfigError, SourceUnavailableError
from tests.support.tls_proxy import TlsPostgres

NO_TLS = "server does not support SSL, but SSL was required"


def _backend(db: Database) -> int:
    with db.session() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _tls_in_use(db: Database) -> bool:
    with db.engine.connect() as conn:
        return bool(conn.connection.dbapi_connection.pgconn.ssl_in_use)  # type: ignore[union-attr]


@pytest.mark.postgres
def test_pool_settings_reach_the_control_engine(pg_settings: Settings) -> None:
    db = Database.connect(
        pg_settings.with_overrides(db_pool_size=3, db_max_overflow=1, db_pool_pre_ping=True)
    )
    try:
        pool = db.engine.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._max_overflow == 1  # type: ignore[attr-defined]
        assert pool._pre_ping is True
        assert pool._recycle == -1  # 0: never recycle
        assert _backend(db) == _backend(db)  # the pooled connection is reused
    finally:
        db.dispose()


@pytest.mark.postgres
def test_a_connection_older_than_the_recycle_age_is_replaced(pg_settings: Settings) -> None:
    db = Database.connect(pg_settings.with_overrides(db_pool_recycle_seconds=1))
    try:
        first = _backend(db)
        assert _backend(db) == first
        time.sleep(1.2)
        assert _backend(db) != first
    finally:
        db.dispose()


@pytest.mark.postgres
def test_verify_full_against_a_server_without_tls_is_one_line_naming_the_database(
    pg_settings: Settings,
) -> None:
    db = Database.connect(pg_settings.with_overrides(db_sslmode="verify-full"))
    try:
        with pytest.raises(SourceUnavailableError) as caught:
            _backend(db)
    finally:
        db.dispose()
    message = str(caught.value)
    assert message.startswith("control database unavailable: ")
    assert NO_TLS in message and "\n" not in message


@pytest.mark.postgres
def test_the_cli_reports_a_tls_refusal_as_one_line_and_exit_6(pg_settings: Settings) -> None:
    app = App()
    app._cache["settings"] = pg_settings.with_overrides(db_sslmode="require")
    result = CliRunner().invoke(cli, ["request", "list"], obj=app)
    assert result.exit_code == 6, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: control database unavailable") and NO_TLS in line
    assert "Traceback" not in result.output


@pytest.mark.postgres
def test_verify_full_with_the_ca_in_settings_connects_over_tls(
    pg_settings: Settings, tls_pg: TlsPostgres
) -> None:
    settings = pg_settings.with_overrides(
        database_url=tls_pg.url(pg_settings.database_url),
        db_sslmode="verify-full",
        db_sslrootcert=str(tls_pg.ca),
    )
    db = Database.connect(settings)
    try:
        assert _tls_in_use(db)
    finally:
        db.dispose()


@pytest.mark.postgres
def test_a_ca_that_did_not_sign_the_server_is_refused_in_one_line(
    pg_settings: Settings, tls_pg: TlsPostgres, tls_pg_client_certs: TlsPostgres
) -> None:
    settings = pg_settings.with_overrides(
        database_url=tls_pg.url(pg_settings.database_url),
        db_sslmode="verify-full",
        db_sslrootcert=str(tls_pg_client_certs.ca),  # another CA
    )
    db = Database.connect(settings)
    try:
        with pytest.raises(SourceUnavailableError) as caught:
            _backend(db)
    finally:
        db.dispose()
    message = str(caught.value)
    assert message.startswith("control database unavailable: ")
    assert "certificate verify failed" in message and "\n" not in message


@pytest.mark.postgres
def test_a_client_certificate_in_settings_is_presented(
    pg_settings: Settings, tls_pg_client_certs: TlsPostgres
) -> None:
    front = tls_pg_client_certs
    verified = pg_settings.with_overrides(
        database_url=front.url(pg_settings.database_url),
        db_sslmode="verify-full",
        db_sslrootcert=str(front.ca),
    )
    without = Database.connect(verified)
    try:
        with pytest.raises(SourceUnavailableError):
            _backend(without)
    finally:
        without.dispose()
    db = Database.connect(
        verified.with_overrides(db_sslcert=str(front.client_cert), db_sslkey=str(front.client_key))
    )
    try:
        assert _tls_in_use(db)
    finally:
        db.dispose()


def test_a_ca_file_that_holds_no_certificate_is_refused_before_connecting(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n", encoding="utf-8")
    settings = Settings(
        database_url="postgresql+psycopg://gdpr@127.0.0.1:1/gdpr",  # nothing listens
        db_sslmode="verify-full",
        db_sslrootcert=str(bad),
    )
    with pytest.raises(ConfigError, match=r"^control database: sslrootcert .* holds no PEM CA"):
        Database.connect(settings)
    with pytest.raises(ConfigError, match="is not a readable file"):
        Database.connect(settings.with_overrides(db_sslrootcert=str(tmp_path / "missing.pem")))


@pytest.mark.parametrize(
    ("query", "ok"),
    [("sslmode=require", False), ("sslmode=verify-full", True), ("sslrootcert=/etc/x", False)],
)
def test_tls_in_settings_must_agree_with_the_url(query: str, ok: bool) -> None:
    settings = Settings(
        database_url=f"postgresql+psycopg://gdpr@127.0.0.1:1/gdpr?{query}",
        db_sslmode="verify-full",
        db_sslrootcert="system",
    )
    if ok:
        Database.connect(settings).dispose()  # builds the engine; nothing connects yet
        return
    with pytest.raises(ConfigError) as caught:
        Database.connect(settings)
    key = query.split("=")[0]
    assert str(caught.value).startswith(f"control database: {key} is ")
    assert "in the URL; keep one of them" in str(caught.value)


def test_sqlite_ignores_pool_size_and_overflow_and_refuses_tls(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / ".gdpr", db_pool_size=1, db_max_overflow=0)
    db = Database.connect(settings.with_overrides(db_pool_recycle_seconds=60))
    try:
        db.upgrade()
        with db.session() as session:
            assert session.execute(text("SELECT 1")).scalar_one() == 1
        assert db.engine.pool._recycle == 60
    finally:
        db.dispose()
    memory = Database.connect(settings.with_overrides(database_url="sqlite:///:memory:"))
    try:  # its pool (one connection per thread) takes no overflow: none is given it
        with memory.session() as session:
            assert session.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        memory.dispose()
    with pytest.raises(
        ConfigError, match=r"^control database: TLS \(sslmode\) applies to PostgreSQL only"
    ):
        Database.connect(settings.with_overrides(db_sslmode="verify-full"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GDPR_DB_POOL_SIZE": "five"}, "setting 'db_pool_size' must be a int"),
        ({"GDPR_DB_POOL_SIZE": "0"}, "setting 'db_pool_size' must be at least 1"),
        ({"GDPR_DB_MAX_OVERFLOW": "-1"}, "setting 'db_max_overflow' must be at least 0"),
        ({"GDPR_DB_POOL_PRE_PING": "maybe"}, "setting 'db_pool_pre_ping' must be a bool"),
        ({"GDPR_DB_SSLMODE": "verify"}, "setting 'db_sslmode' must be one of disable"),
        ({"GDPR_DB_SSLCERT": "/c.crt"}, "'db_sslcert' and setting 'db_sslkey' go together"),
    ],
)
def test_malformed_pool_and_tls_settings_are_one_line_errors(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_pool_and_tls_settings_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "GDPR_DB_POOL_SIZE": "8",
        "GDPR_DB_MAX_OVERFLOW": "0",
        "GDPR_DB_POOL_RECYCLE_SECONDS": "1800",
        "GDPR_DB_POOL_PRE_PING": "true",
        "GDPR_DB_SSLMODE": "verify-full",
        "GDPR_DB_SSLROOTCERT": "/etc/ssl/ca.pem",
    }
    settings = load_settings(env)
    assert (settings.control_pool.size, settings.control_pool.max_overflow) == (8, 0)
    assert settings.control_pool.recycle_seconds == 1800 and settings.control_pool.pre_ping
    assert settings.control_tls.given() == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/ca.pem",
    }
