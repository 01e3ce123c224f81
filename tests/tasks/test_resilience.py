"""Killed workers, restarted Redis, dropped database connections: work is delayed, never lost."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ON_CI
from tests.tasks.workers import (
    environment,
    gdpr,
    production_environment,
    running_worker,
    wait_for_status,
)

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, so it can be stopped and started at will."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
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
                time.sleep(0.1)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed; run `bash ops/services.sh up`"
        pytest.fail(message) if ON_CI else pytest.skip(message)
    server = PrivateRedis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def test_request_submitted_while_redis_is_down_runs_after_the_sweep(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    env = environment(
        tmp_path, {"GDPR_BROKER_URL": private_redis.url, "GDPR_REDISPATCH_AFTER_SECONDS": "0"}
    )
    private_redis.stop()
    started = time.monotonic()
    created = gdpr(tmp_path, env, "request", "export", "--email", "ada@example.com")
    assert time.monotonic() - started < 60, "submission must not hang on a dead broker"
    assert created["status"] == "queued"  # stored; dispatch deferred
    private_redis.start()
    with running_worker(tmp_path, env, tmp_path / "worker.log"):
        swept = gdpr(tmp_path, env, "maintenance", "sweep")
        assert swept["redispatched"] == [created["id"]]
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"})
    assert done["status"] == "completed", done["last_error"]


def test_worker_keeps_working_after_redis_restarts(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    env = environment(tmp_path, {"GDPR_BROKER_URL": private_redis.url})
    with running_worker(tmp_path, env, tmp_path / "worker.log"):
        private_redis.stop()
        time.sleep(1)
        private_redis.start()
        created = gdpr(tmp_path, env, "request", "export", "--email", "ada@example.com")
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"}, timeout=120)
    assert done["status"] == "completed", done["last_error"]


def test_dropped_database_connections_do_not_fail_the_next_request(
    tmp_path: Path, pg_settings: object, pg_url: str, redis_url: str
) -> None:
    env = production_environment(tmp_path, pg_url, redis_url)
    with running_worker(tmp_path, env, tmp_path / "worker.log"):
        first = gdpr(tmp_path, env, "request", "export", "--email", "ada@example.com")
        assert wait_for_status(tmp_path, env, first["id"], {"completed"})["status"] == "completed"
        database = pg_url.rsplit("/", 1)[1]
        admin = create_engine(pg_url.rsplit("/", 1)[0] + "/postgres")
        with admin.begin() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar_one()
        admin.dispose()
        assert killed >= 1
        second = gdpr(tmp_path, env, "request", "export", "--email", "bob@example.com")
        done = wait_for_status(tmp_path, env, second["id"], {"completed", "failed"})
    assert done["status"] == "completed", done["last_error"]


def test_beat_sweeps_a_request_whose_dispatch_was_lost(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    env = environment(
        tmp_path,
        {
            "GDPR_BROKER_URL": private_redis.url,
            "GDPR_REDISPATCH_AFTER_SECONDS": "0",
            "GDPR_SWEEP_EVERY_SECONDS": "1",
        },
    )
    private_redis.stop()
    created = gdpr(tmp_path, env, "request", "export", "--email", "ada@example.com")
    private_redis.start()  # the message was never sent; only the sweep can recover it
    log = tmp_path / "worker.log"
    with running_worker(tmp_path, env, log, "--beat"):
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"}, timeout=90)
    assert done["status"] == "completed", done["last_error"]
    assert "gdpr.maintenance.sweep" in log.read_text()
