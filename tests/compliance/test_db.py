"""The control database's pool: a connection the server dropped is replaced before use,
without a round trip per checkout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from compliance import db as control_db
from compliance.config import Settings
from compliance.db import Database
from compliance.errors import SourceUnavailableError

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_db(pg_settings: Settings) -> Iterator[Database]:
    database = Database.connect(pg_settings)
    yield database
    database.dispose()


def _backend(db: Database) -> int:
    with db.session() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    admin = create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    finally:
        admin.dispose()
    time.sleep(0.2)  # its last words reach our socket


def test_a_connection_the_server_terminated_is_replaced_before_use(
    pg_db: Database, pg_url: str
) -> None:
    first = _backend(pg_db)
    _terminate(pg_url, first)
    assert _backend(pg_db) != first  # no error: the pool saw the socket and reconnected


def test_a_connection_idle_for_long_is_pinged_and_replaced_if_dead(
    pg_db: Database, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend(pg_db)
    monkeypatch.setattr(control_db, "_readable", lambda _conn: False)  # a silent drop
    monkeypatch.setattr(control_db, "PING_IDLE_SECONDS", 0.0)
    _terminate(pg_url, first)
    assert _backend(pg_db) != first


def test_without_the_checks_a_dropped_connection_fails_the_transaction_retryably(
    pg_db: Database, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend(pg_db)
    monkeypatch.setattr(control_db, "_readable", lambda _conn: False)
    _terminate(pg_url, first)  # used a moment ago, so not pinged
    with pytest.raises(SourceUnavailableError):
        _backend(pg_db)
    assert _backend(pg_db) != first  # the pool replaced its connections after the failure
