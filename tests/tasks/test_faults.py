"""The fault suite: real processes killed and a real Redis restarted mid-erasure, on the
default lease and sweep settings. Each case completes with zero residue within two
minutes of a live worker being there, and prints its recovery time.

PostgreSQL holds the control data; the broker is a Redis server this module starts on a
port of its own (restarting the machine's shared Redis is not ours to do).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import make_test_keys
from tests.tasks.test_killed_worker import ADA_EVENTS, BOB_EVENTS, MANIFEST, count, make_app_db
from tests.tasks.workers import (
    GDPR,
    as_operator,
    environment,
    gdpr,
    stop,
    wait_for_status,
    wait_for_text,
)

pytestmark = [pytest.mark.slow, pytest.mark.fault]

RECOVERY_LIMIT = 120.0  # seconds from a live worker being there to completed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A throwaway redis-server without persistence: a restart loses every message."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; the fault suite starts its own")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _env(
    tmp_path: Path, pg_url: str, broker: OwnRedis, **extra: str
) -> tuple[Path, dict[str, str]]:
    app_db = tmp_path / "app.db"
    make_app_db(app_db)
    (tmp_path / "sources.toml").write_text(MANIFEST.format(path=app_db))
    keys = make_test_keys()
    env = environment(
        tmp_path,
        {
            "GDPR_SOURCES": str(tmp_path / "sources.toml"),
            "GDPR_BATCH_SIZE": "100",
            "GDPR_DATABASE_URL": pg_url,
            "GDPR_BROKER_URL": broker.url,
            "GDPR_KEYS": keys["keys"],
            "GDPR_PSEUDONYM_KEY": keys["pseudonym_key"],
            **{f"GDPR_{k.upper()}": v for k, v in extra.items()},
        },
    )
    return app_db, env


def _worker(cwd: Path, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [GDPR, "worker", "-c", "1", *extra],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _erasure(cwd: Path, env: dict[str, str], logins: dict[str, str]) -> str:
    created = gdpr(cwd, env, "request", "erase", "--email", "ada@example.com")
    gdpr(cwd, as_operator(env, "bob", logins), "request", "approve", created["id"])
    return str(created["id"])


def _mid_way(app_db: Path, log: Path) -> None:
    deadline = time.monotonic() + 90
    while count(app_db, "SELECT count(*) FROM events WHERE user_id = 1") == ADA_EVENTS:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)


def _nothing_left(app_db: Path, home: Path) -> None:
    assert count(app_db, "SELECT count(*) FROM events WHERE user_id = 1") == 0
    assert count(app_db, "SELECT count(*) FROM users WHERE id = 1") == 0
    assert count(app_db, "SELECT count(*) FROM events WHERE user_id = 2") == BOB_EVENTS
    assert len(list((home / "outbox").glob("*.eml"))) == 1  # one receipt, not one per run


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_a_killed_worker_is_recovered_by_the_next_one_within_two_minutes(
    tmp_path: Path, pg_operators: dict[str, str], pg_url: str, broker: OwnRedis
) -> None:
    app_db, env = _env(tmp_path, pg_url, broker)
    request_id = _erasure(tmp_path, env, pg_operators)
    log = tmp_path / "worker.log"
    first = _worker(tmp_path, env, log, "--beat")
    _mid_way(app_db, log)
    stop(first, signal.SIGKILL)  # the whole worker, beat and all
    second = _worker(tmp_path, env, log, "--beat")
    try:
        wait_for_text(log, "ready.", timeout=60)
        live = time.monotonic()
        done = wait_for_status(
            tmp_path, env, request_id, {"completed", "failed"}, 2 * RECOVERY_LIMIT
        )
        took = time.monotonic() - live
    finally:
        stop(second)
    print(f"\nrecovery after the whole worker was killed: {took:.1f} s")
    assert done["status"] == "completed", done["last_error"]
    assert took < RECOVERY_LIMIT
    _nothing_left(app_db, tmp_path / ".gdpr")


def test_a_killed_pool_child_is_redelivered_and_taken_over_within_two_minutes(
    tmp_path: Path, pg_operators: dict[str, str], pg_url: str, broker: OwnRedis
) -> None:
    app_db, env = _env(tmp_path, pg_url, broker)
    request_id = _erasure(tmp_path, env, pg_operators)
    log = tmp_path / "worker.log"
    worker = _worker(tmp_path, env, log)  # no beat: recovery without the sweep
    try:
        _mid_way(app_db, log)
        [child] = _children(worker.pid)
        os.kill(child, signal.SIGKILL)
        killed = time.monotonic()
        done = wait_for_status(
            tmp_path, env, request_id, {"completed", "failed"}, 2 * RECOVERY_LIMIT
        )
        took = time.monotonic() - killed
    finally:
        stop(worker)
    print(f"\nrecovery after the pool child was killed: {took:.1f} s")
    assert done["status"] == "completed", done["last_error"]
    assert took < RECOVERY_LIMIT
    _nothing_left(app_db, tmp_path / ".gdpr")


def test_a_redis_restart_that_loses_the_next_chunk_is_recovered_within_two_minutes(
    tmp_path: Path, pg_operators: dict[str, str], pg_url: str, broker: OwnRedis
) -> None:
    app_db, env = _env(tmp_path, pg_url, broker, erase_chunk_seconds="0.5")
    request_id = _erasure(tmp_path, env, pg_operators)
    log = tmp_path / "worker.log"
    worker = _worker(tmp_path, env, log, "--beat")
    try:
        _mid_way(app_db, log)
        broker.stop()  # every queued message, the next chunk's too, is gone
        broker.start()
        restarted = time.monotonic()
        done = wait_for_status(
            tmp_path, env, request_id, {"completed", "failed"}, 2 * RECOVERY_LIMIT
        )
        took = time.monotonic() - restarted
    finally:
        stop(worker)
    print(f"\nrecovery after Redis restarted empty: {took:.1f} s")
    assert done["status"] == "completed", done["last_error"]
    assert took < RECOVERY_LIMIT
    _nothing_left(app_db, tmp_path / ".gdpr")


def test_a_worker_killed_mid_export_leaves_one_package_and_one_email(
    tmp_path: Path, pg_operators: dict[str, str], pg_url: str, broker: OwnRedis
) -> None:
    _, env = _env(tmp_path, pg_url, broker)
    log = tmp_path / "worker.log"
    first = _worker(tmp_path, env, log, "--beat")
    wait_for_text(log, "ready.", timeout=60)
    created = gdpr(tmp_path, env, "request", "export", "--email", "ada@example.com")
    control = create_engine(pg_url)
    deadline = time.monotonic() + 60
    status = "queued"
    while status == "queued":
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        with control.connect() as conn:
            status = conn.execute(
                text("SELECT status FROM dsr_request WHERE id = :id"), {"id": created["id"]}
            ).scalar_one()
        time.sleep(0.01)
    control.dispose()
    assert status == "running", "the kill must land while the export runs"
    stop(first, signal.SIGKILL)
    second = _worker(tmp_path, env, log, "--beat")
    try:
        wait_for_text(log, "ready.", timeout=60)
        live = time.monotonic()
        done = wait_for_status(
            tmp_path, env, created["id"], {"completed", "failed"}, 2 * RECOVERY_LIMIT
        )
        took = time.monotonic() - live
    finally:
        stop(second)
    print(f"\nrecovery of an export after the whole worker was killed: {took:.1f} s")
    assert done["status"] == "completed", done["last_error"]
    assert took < RECOVERY_LIMIT
    home = tmp_path / ".gdpr"
    assert len(list((home / "objects").rglob("*.zip.enc"))) == 1
    assert len(list((home / "outbox").glob("*.eml"))) == 1


def test_a_worker_killed_mid_batch_loses_no_export_and_repeats_none(
    tmp_path: Path, pg_operators: dict[str, str], pg_url: str, broker: OwnRedis
) -> None:
    """Three exports claimed as one batch (`EXPORT_BATCH`): the worker dies after the first
    completed, in the middle of the second, with the third claimed but not started."""
    app_db, env = _env(tmp_path, pg_url, broker)
    with sqlite3.connect(app_db) as conn:
        conn.execute("INSERT INTO users VALUES (3, 'cy@example.com')")
    emails = ["bob@example.com", "ada@example.com", "cy@example.com"]  # ada has 60k events
    ids = {e: gdpr(tmp_path, env, "request", "export", "--email", e)["id"] for e in emails}
    log = tmp_path / "worker.log"
    first = _worker(tmp_path, env, log, "--beat")
    control = create_engine(pg_url)
    try:
        found = _statuses_when(
            control, ids, log, lambda s: s["bob@example.com"] in {"completed", "failed"}
        )
    finally:
        stop(first, signal.SIGKILL)
        control.dispose()
    assert found == {e: s for e, s in zip(emails, ["completed", "running", "running"], strict=True)}
    second = _worker(tmp_path, env, log, "--beat")
    try:
        wait_for_text(log, "ready.", timeout=60)
        live = time.monotonic()
        done = {
            e: wait_for_status(tmp_path, env, i, {"completed", "failed"}, 2 * RECOVERY_LIMIT)
            for e, i in ids.items()
        }
        took = time.monotonic() - live
    finally:
        stop(second)
    print(f"\nrecovery of a batch of exports after the whole worker was killed: {took:.1f} s")
    assert {e: d["status"] for e, d in done.items()} == dict.fromkeys(emails, "completed")
    assert {e: d["attempts"] for e, d in done.items()} == {
        "bob@example.com": 1,
        "ada@example.com": 2,
        "cy@example.com": 2,
    }
    assert took < RECOVERY_LIMIT
    home = tmp_path / ".gdpr"
    assert len(list((home / "objects").rglob("*.zip.enc"))) == 3
    sent = [p.read_text() for p in (home / "outbox").glob("*.eml")]
    assert sorted(e for e in emails for mail in sent if f"To: {e}" in mail) == sorted(emails)


def _statuses_when(
    control: Any, ids: dict[str, str], log: Path, ready: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    """Poll the requests' statuses until `ready` says so; the statuses then."""
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        with control.connect() as conn:
            rows = conn.execute(
                text("SELECT id, status FROM dsr_request WHERE id::text = ANY(:ids)"),
                {"ids": list(ids.values())},
            ).all()
        by_id = {str(row.id): str(row.status) for row in rows}
        statuses = {email: by_id[i] for email, i in ids.items()}
        if ready(statuses):
            return statuses
        time.sleep(0.01)
