"""A worker killed in the middle of an erasure: the next worker resumes and leaves nothing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.tasks.workers import GDPR, environment, gdpr, stop, wait_for_status, wait_for_text

pytestmark = pytest.mark.slow

ADA_EVENTS = 60_000
BOB_EVENTS = 1_000

MANIFEST = """
[sources.app]
kind = "sql"
url = "sqlite:///{path}"

[sources.app.tables.users]
identities = {{ email = "email", id = "user_id" }}

[sources.app.tables.events]
references = [{{ columns = "user_id", table = "users", kind = "owned" }}]
"""


def make_app_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
        conn.execute(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, body TEXT)"
        )
        conn.executemany(
            "INSERT INTO users VALUES (?, ?)", [(1, "ada@example.com"), (2, "bob@example.com")]
        )
        rows = [(1, "x" * 40)] * ADA_EVENTS + [(2, "y" * 40)] * BOB_EVENTS
        conn.executemany("INSERT INTO events (user_id, body) VALUES (?, ?)", rows)


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def start_worker(cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [GDPR, "worker", "-c", "1"],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def app_with_sources(tmp_path: Path, **settings: str) -> tuple[Path, dict[str, str]]:
    """The events app and a worker environment with it as the only source (batch 100)."""
    app_db = tmp_path / "app.db"
    make_app_db(app_db)
    (tmp_path / "sources.toml").write_text(MANIFEST.format(path=app_db))
    extra = {"GDPR_SOURCES": str(tmp_path / "sources.toml"), "GDPR_BATCH_SIZE": "100"}
    extra |= {f"GDPR_{name.upper()}": value for name, value in settings.items()}
    return app_db, environment(tmp_path, extra)


def test_erasure_resumes_after_the_worker_is_killed_mid_way(tmp_path: Path) -> None:
    app_db, env = app_with_sources(tmp_path, lease_seconds="6", redispatch_after_seconds="0")
    created = gdpr(tmp_path, env, "request", "erase", "--email", "ada@example.com")
    gdpr(tmp_path, env | {"GDPR_OPERATOR": "bob"}, "request", "approve", created["id"])

    log = tmp_path / "worker.log"
    first = start_worker(tmp_path, env, log)
    deadline = time.monotonic() + 90
    while count(app_db, "SELECT count(*) FROM events WHERE user_id = 1") == ADA_EVENTS:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    stop(first, signal.SIGKILL)  # the whole worker, mid-erasure
    left = count(app_db, "SELECT count(*) FROM events WHERE user_id = 1")
    assert 0 < left < ADA_EVENTS, "the kill must land in the middle of the erasure"
    assert gdpr(tmp_path, env, "request", "show", created["id"])["status"] == "running"

    # beat's sweep (every minute) recovers the request once its lease (6 s here: the two
    # CLI calls between the kill and this sweep take seconds on a loaded machine) expired
    swept = gdpr(tmp_path, env, "maintenance", "sweep")
    assert swept["released"] == []  # the lease is still alive right after the kill
    deadline = time.monotonic() + 15
    while not swept["released"]:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.5)
        swept = gdpr(tmp_path, env, "maintenance", "sweep")
    assert swept["released"] == [created["id"]]
    assert swept["redispatched"] == [created["id"]]
    second = start_worker(tmp_path, env, log)
    try:
        wait_for_text(log, "ready.", timeout=60)
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"}, timeout=180)
    finally:
        stop(second)
    assert done["status"] == "completed", done["last_error"]
    assert count(app_db, "SELECT count(*) FROM events WHERE user_id = 1") == 0
    assert count(app_db, "SELECT count(*) FROM users WHERE id = 1") == 0
    assert count(app_db, "SELECT count(*) FROM events WHERE user_id = 2") == BOB_EVENTS
    assert count(app_db, "SELECT count(*) FROM users WHERE id = 2") == 1
    assert done["attempts"] == 2


def test_a_long_erasure_runs_as_a_chain_of_short_tasks(tmp_path: Path) -> None:
    from tests.tasks.workers import running_worker

    app_db, env = app_with_sources(tmp_path, erase_chunk_seconds="0.2")
    created = gdpr(tmp_path, env, "request", "erase", "--email", "ada@example.com")
    gdpr(tmp_path, env | {"GDPR_OPERATOR": "bob"}, "request", "approve", created["id"])
    log = tmp_path / "worker.log"
    with running_worker(tmp_path, env, log):
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"}, timeout=180)
    assert done["status"] == "completed", done["last_error"]
    assert done["attempts"] == 1  # one claim, many tasks
    assert log.read_text().count("succeeded in") >= 3  # each chunk is its own task
    assert "'continued'" in log.read_text()
    assert count(app_db, "SELECT count(*) FROM events WHERE user_id = 1") == 0
    assert count(app_db, "SELECT count(*) FROM events WHERE user_id = 2") == BOB_EVENTS
