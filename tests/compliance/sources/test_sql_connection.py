"""A SQL source's pool and TLS keys: they reach its engine, a refused TLS connection is one
line naming the source, and a malformed key is a manifest error naming source and key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance.config import Settings
from compliance.errors import ManifestError, SourceUnavailableError
from compliance.sources.registry import Registry, load_registry
from compliance.sources.sql.source import SqlSource
from tests.support.services import pg_database
from tests.support.tls_proxy import TlsPostgres

KEY = b"k" * 32
NO_TLS = "server does not support SSL, but SSL was required"


@pytest.fixture
def app_url() -> Iterator[str]:
    """An application database on the machine's PostgreSQL with one personal table."""
    with pg_database("pools_app") as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE users (id serial PRIMARY KEY, email text)"))
        engine.dispose()
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id integer PRIMARY KEY, email text)"))
    engine.dispose()
    return url


def manifest(url: str, keys: str = "") -> str:
    return (
        f'[sources.shop]\nkind = "sql"\nurl = "{url}"\n{keys}\n'
        '[sources.shop.tables.users]\nidentities = { email = "email" }\n'
    )


def load(tmp_path: Path, text_: str, **kwargs: Any) -> Registry:
    path = tmp_path / "sources.toml"
    path.write_text(text_, encoding="utf-8")
    settings = Settings(home=tmp_path / ".gdpr", sources=str(path))
    return load_registry(settings, environ={}, pseudonym_key=KEY, **kwargs)


def shop(registry: Registry) -> SqlSource:
    source = registry.get("shop")
    assert isinstance(source, SqlSource)
    return source


def backend(source: SqlSource) -> int:
    with source.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.postgres
def test_pool_keys_reach_the_source_engine(tmp_path: Path, app_url: str) -> None:
    keys = "pool_size = 3\nmax_overflow = 0\npool_pre_ping = true"
    registry = load(tmp_path, manifest(app_url, keys))
    try:
        pool = shop(registry).engine.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._max_overflow == 0  # type: ignore[attr-defined]
        assert pool._pre_ping is True
    finally:
        registry.close()


@pytest.mark.postgres
def test_without_keys_a_source_keeps_two_connections_and_two_more(
    tmp_path: Path, app_url: str
) -> None:
    registry = load(tmp_path, manifest(app_url))
    try:
        pool = shop(registry).engine.pool
        assert (pool.size(), pool._max_overflow) == (2, 2)  # type: ignore[attr-defined]
        assert pool._pre_ping is False and pool._recycle == -1
    finally:
        registry.close()


@pytest.mark.postgres
def test_a_source_connection_older_than_its_recycle_age_is_replaced(
    tmp_path: Path, app_url: str
) -> None:
    registry = load(tmp_path, manifest(app_url, "pool_recycle_seconds = 1"))
    try:
        source = shop(registry)
        first = backend(source)
        assert backend(source) == first
        time.sleep(1.2)
        assert backend(source) != first
    finally:
        registry.close()


@pytest.mark.postgres
def test_verify_full_against_a_server_without_tls_is_one_line_naming_the_source(
    tmp_path: Path, app_url: str
) -> None:
    with pytest.raises(SourceUnavailableError) as caught:
        load(tmp_path, manifest(app_url, 'sslmode = "verify-full"'))
    message = str(caught.value)
    assert message.startswith("source shop: database unavailable")
    assert NO_TLS in message and "\n" not in message


@pytest.mark.postgres
def test_tls_keys_with_a_relative_ca_file_connect_verified(
    tmp_path: Path, app_url: str, tls_pg: TlsPostgres
) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(tls_pg.ca.read_bytes())
    keys = 'sslmode = "verify-full"\nsslrootcert = "certs/ca.pem"'  # beside the manifest
    registry = load(tmp_path, manifest(tls_pg.url(app_url), keys))
    try:
        source = shop(registry)
        with source.connect() as conn:
            assert conn.connection.dbapi_connection.pgconn.ssl_in_use  # type: ignore[union-attr]
        assert source.tls.sslrootcert == str(tmp_path / "certs" / "ca.pem")
    finally:
        registry.close()


@pytest.mark.postgres
def test_a_client_certificate_in_the_manifest_is_presented(
    tmp_path: Path, app_url: str, tls_pg_client_certs: TlsPostgres
) -> None:
    front = tls_pg_client_certs
    verified = f'sslmode = "verify-full"\nsslrootcert = "{front.ca}"'
    with pytest.raises(SourceUnavailableError, match=r"^source shop: "):
        load(tmp_path, manifest(front.url(app_url), verified))
    client = f'\nsslcert = "{front.client_cert}"\nsslkey = "{front.client_key}"'
    registry = load(tmp_path, manifest(front.url(app_url), verified + client))
    registry.close()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('pool_size = "two"', "sources.shop: 'pool_size' must be a integer, not string"),
        ("pool_size = 0", "sources.shop: 'pool_size' must be at least 1"),
        ("max_overflow = -1", "sources.shop: 'max_overflow' must be at least 0"),
        ("pool_recycle_seconds = 1.5", "sources.shop: 'pool_recycle_seconds' must be a integer"),
        ('pool_pre_ping = "yes"', "sources.shop: 'pool_pre_ping' must be a boolean"),
        ("pool_sise = 3", "sources.shop: unknown key 'pool_sise'"),
        ('sslmode = "verify"', "sources.shop: 'sslmode' must be one of disable, allow"),
        ('sslcert = "client.crt"', "sources.shop: 'sslcert' and 'sslkey' go together"),
        ('sslrootcert = "missing.pem"', "sources.shop: sslrootcert "),
    ],
)
def test_a_malformed_connection_key_names_the_source_and_the_key(
    tmp_path: Path, keys: str, message: str
) -> None:
    url = "postgresql+psycopg://gdpr@127.0.0.1:1/app"  # nothing listens: nothing connects
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, manifest(url, keys), connect=False)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_ca_file_that_holds_no_certificate_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("garbage\n", encoding="utf-8")
    url = "postgresql+psycopg://gdpr@127.0.0.1:1/app"
    keys = 'sslmode = "verify-full"\nsslrootcert = "ca.pem"'
    with pytest.raises(ManifestError, match=r"^sources\.shop: sslrootcert .* holds no PEM CA"):
        load(tmp_path, manifest(url, keys), connect=False)


def test_tls_keys_that_contradict_the_url_are_a_manifest_error(tmp_path: Path) -> None:
    url = "postgresql+psycopg://gdpr@127.0.0.1:1/app?sslmode=require"
    with pytest.raises(ManifestError) as caught:
        load(tmp_path, manifest(url, 'sslmode = "verify-full"'), connect=False)
    assert str(caught.value) == (
        "sources.shop: sslmode is 'verify-full' in the manifest but 'require' in the URL;"
        " keep one of them"
    )
    agreeing = manifest(url.replace("require", "verify-full"), 'sslmode = "verify-full"')
    load(tmp_path, agreeing, connect=False).close()


def test_a_sqlite_source_ignores_pool_size_and_refuses_tls(tmp_path: Path, sqlite_url: str) -> None:
    keys = "pool_size = 1\nmax_overflow = 0\npool_recycle_seconds = 60"
    registry = load(tmp_path, manifest(sqlite_url, keys))
    try:
        assert shop(registry).engine.pool._recycle == 60
        assert shop(registry).identity_types() == {"email"}
    finally:
        registry.close()
    with pytest.raises(
        ManifestError, match=r"^sources.shop: TLS \(sslmode\) applies to PostgreSQL"
    ):
        load(tmp_path, manifest(sqlite_url, 'sslmode = "require"'))
