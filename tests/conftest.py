"""Shared fixtures: real services (PostgreSQL, Redis, S3, SMTP) and settings per backend.

Where each service comes from, and what the suite creates on a shared machine, is in
`tests/support/services.py`: every port, database prefix and Redis db is a variable, and the
servers the suite starts are stopped when it ends.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.keyring import new_key_line
from compliance.models import Base
from tests.support import services
from tests.support.services import (  # re-exported: tests import these from here
    ON_CI,
    PG_HOST,
    PG_PORT,
    PG_USER,
    REDIS_CACHE_DB,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    require_service,
)

__all__ = ["ON_CI", "PG_HOST", "PG_PORT", "PG_USER", "REDIS_CACHE_DB", "require_service"]


# --- services ---------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _leave_redis_empty() -> Iterator[None]:
    """The suite's Redis dbs hold nothing once the session ends."""
    yield
    services.empty_redis_dbs()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with services.pg_database("control") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_service("Redis", REDIS_PORT, REDIS_HOST)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The S3-compatible endpoint for this session (started here unless one is named)."""
    with services.s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the local S3 server."""
    import boto3

    name = f"gdpr-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    """(host, port, maildir) of the local SMTP server; each message lands as a .eml file."""
    with services.smtp_server(tmp_path_factory.mktemp("smtp")) as server:
        yield server


@pytest.fixture(autouse=True)
def _aws_test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


# --- settings and control database per backend ----------------------------------------------


def make_test_keys() -> dict[str, str]:
    return {
        "keys": new_key_line("test-1"),
        "pseudonym_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Embedded defaults under a temporary home (SQLite, filesystem, outbox)."""
    return Settings(home=tmp_path / ".gdpr", operator="alice")


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str) -> Iterator[Settings]:
    """PostgreSQL control database (emptied before each test) with a configured keyring."""
    _truncate(pg_url)
    yield Settings(
        home=tmp_path / ".gdpr", database_url=pg_url, operator="alice", **make_test_keys()
    )


_migrated: set[str] = set()


def _truncate(url: str) -> None:
    db = Database.connect(Settings(database_url=url))
    try:
        if url not in _migrated:
            db.upgrade()
            _migrated.add(url)
        names = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        with db.engine.begin() as conn:
            # the audit trail is append-only (migration 0002): a superuser may empty it
            # only with the triggers off, as tests do between tests
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        db.dispose()


@pytest.fixture(scope="session")
def pg_operator_urls(pg_url: str) -> Iterator[dict[str, str]]:
    """Logins for the operators alice, bob and carol on the session's control database
    (its operators' group exists once it is migrated): name -> URL."""
    _truncate(pg_url)
    with services.pg_logins(pg_url, ["alice", "bob", "carol"]) as urls:
        yield urls


@pytest.fixture
def pg_operators(pg_settings: Settings, pg_operator_urls: dict[str, str]) -> dict[str, str]:
    """The emptied PostgreSQL control database of `pg_settings`, where alice, bob and carol
    are operators holding every role: name -> URL connecting as that operator's login."""
    db = Database.connect(pg_settings)
    try:
        logins = {name: services.login_of(url) for name, url in pg_operator_urls.items()}
        register_operators(db, logins, ("agent", "approver", "admin"))
    finally:
        db.dispose()
    return pg_operator_urls


def register_operators(db: Database, names: dict[str, str], roles: tuple[str, ...]) -> None:
    """Give each recorded operator name these roles, as the installation's service login."""
    from compliance.models import OperatorRole

    now = utcnow()
    with db.session() as session:
        for name in names.values():
            for role in roles:
                session.add(OperatorRole(name=name, role=role, granted_by="test", granted_at=now))


@pytest.fixture
def as_operator(
    db: Database, settings: Settings, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Database]]:
    """The control database as operator `name` (alice, bob or carol) reaches it: the
    fixture's own on SQLite; on PostgreSQL a connection as that operator's own login,
    holding every role."""
    if db.engine.dialect.name != "postgresql":
        yield lambda name: db
        return
    urls: dict[str, str] = request.getfixturevalue("pg_operator_urls")
    logins = {name: services.login_of(url) for name, url in urls.items()}
    register_operators(db, logins, ("agent", "approver", "admin"))
    opened: dict[str, Database] = {}

    def connect(name: str) -> Database:
        if name not in opened:
            opened[name] = Database.connect(settings.with_overrides(database_url=urls[name]))
        return opened[name]

    yield connect
    for database in opened.values():
        database.dispose()


@pytest.fixture
def recorded_name(db: Database, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """The name the control database records for operator `name` (`as_operator`)."""
    if db.engine.dialect.name != "postgresql":
        return lambda name: name
    urls: dict[str, str] = request.getfixturevalue("pg_operator_urls")
    return lambda name: services.login_of(urls[name])


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Run the test once on the embedded SQLite database and once on PostgreSQL."""
    name = "sqlite_settings" if request.param == "sqlite" else "pg_settings"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database.connect(settings)
    database.upgrade()
    yield database
    database.dispose()


# --- download links and the download service -------------------------------------------------


@pytest.fixture
def make_export_request(db: Database) -> Callable[..., uuid.UUID]:
    """Factory: a completed export request with an export_package row (nothing stored)."""
    from datetime import timedelta

    from compliance.db import utcnow
    from compliance.models import DsrRequest, ExportPackage

    def make(
        *,
        kind: str = "export",
        package_days: int = 30,
        object_key: str | None = None,
        with_package: bool = True,
    ) -> uuid.UUID:
        now = utcnow()
        request_id = uuid.uuid4()
        with db.session() as session:
            session.add(
                DsrRequest(
                    id=request_id,
                    kind=kind,
                    status="completed",
                    subject="ps_" + secrets.token_hex(16),
                    submitted_by="alice",
                    submitted_at=now,
                    due_at=now + timedelta(days=30),
                    updated_at=now,
                )
            )
            session.flush()
            if with_package:
                session.add(
                    ExportPackage(
                        request_id=request_id,
                        object_key=object_key or f"exports/{request_id}.zip.enc",
                        size=0,
                        sha256="0" * 64,
                        key_id="test-1",
                        created_at=now,
                        expires_at=now + timedelta(days=package_days),
                    )
                )
        return request_id

    return make


def make_export_zip(request_id: uuid.UUID) -> bytes:
    """A real export package (exporters.package): rows, a 300 KB file, index and manifest."""
    from compliance.db import utcnow
    from compliance.sources.base import Art15, FileItem, RowsItem
    from exporters.package import write_package

    avatar = secrets.token_bytes(300_000)  # incompressible: the package spans many segments
    items = [
        RowsItem(
            source="app",
            collection="users",
            rows=[{"id": 1, "email": "ada@example.com", "name": "Ada"}],
            meta=Art15(purpose="your account", legal_basis="contract"),
        ),
        FileItem(source="avatars", path="1/me.bin", chunks=lambda: iter([avatar]), size=300_000),
    ]
    return b"".join(write_package(items, request_id=request_id, generated_at=utcnow()))


class DownloadSite:
    """A running download service (waitress on an ephemeral port) with one live link."""

    def __init__(self, settings: Settings, db: Database, storage: object, keyring: object) -> None:
        self.settings, self.db, self.storage, self.keyring = settings, db, storage, keyring
        self.zip_bytes = b""
        self.token = ""
        self.request_id: uuid.UUID | None = None
        self.server: object = None

    @property
    def url(self) -> str:
        return f"{self.server.url}/d/{self.token}"  # type: ignore[attr-defined]

    def store(self, request_id: uuid.UUID, plaintext: bytes, mangle: object = None) -> None:
        from exporters.crypto import encrypt_stream, keyring_wrapper

        chunks = [plaintext[i : i + 100_000] for i in range(0, len(plaintext), 100_000)]
        cipher = b"".join(encrypt_stream(chunks, keyring_wrapper(self.keyring)))  # type: ignore[arg-type]
        if callable(mangle):
            cipher = mangle(cipher)
        self.storage.upload(f"exports/{request_id}.zip.enc", [cipher])  # type: ignore[attr-defined]

    def issue(self, request_id: uuid.UUID) -> str:
        from compliance.db import utcnow
        from exporters import links

        with self.db.session() as session:
            return links.issue_link(session, request_id, self.settings, utcnow())


@pytest.fixture
def download_site(
    db: Database, settings: Settings, make_export_request: Callable[..., uuid.UUID]
) -> Iterator[DownloadSite]:
    """The download service over real sockets, serving one stored, encrypted export."""
    from compliance.keyring import load_keyring
    from exporters.storage import open_storage
    from exporters.web import create_app
    from exporters.web_server import start_in_thread

    settings = settings.with_overrides(rate_limit_per_minute=1000)
    site = DownloadSite(settings, db, open_storage(settings), load_keyring(settings))
    site.request_id = make_export_request()
    site.zip_bytes = make_export_zip(site.request_id)
    site.store(site.request_id, site.zip_bytes)
    site.token = site.issue(site.request_id)
    app = create_app(settings, db, site.storage, site.keyring)  # type: ignore[arg-type]
    site.server = start_in_thread(app)
    yield site
    site.server.stop()  # type: ignore[attr-defined]
