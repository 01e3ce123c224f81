"""Beat fires the retention sweep on its schedule; real workers on Redis sweep the parts
and run the erasures of closed accounts; PostgreSQL holds the app and the control data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.sample_app import retention as app
from tests.sample_app.fixtures import app_database
from tests.tasks.workers import gdpr, production_environment, running_worker

pytestmark = pytest.mark.slow


def _ids(url: str, table: str) -> set[int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = {row[0] for row in conn.execute(text(f"SELECT id FROM {table}"))}
    engine.dispose()
    return found


def test_beat_fires_the_sweep_and_workers_finish_it(
    tmp_path: Path, pg_settings: object, pg_url: str, redis_url: str
) -> None:
    with app_database("postgres", tmp_path, "beat") as url:
        now = datetime.now(UTC)
        app.create(url, now)
        manifest = tmp_path / "sources.toml"
        manifest.write_text(app.MANIFEST.format(url=url, extra=""))
        env = production_environment(tmp_path, pg_url, redis_url) | {
            "GDPR_SOURCES": str(manifest),
            "GDPR_RETENTION_CRON": "* * * * *",  # every minute, for the test
        }
        log = tmp_path / "worker.log"
        with running_worker(tmp_path, env, log, "--beat"):
            runs = _wait_for_runs(tmp_path, env, 3, timeout=150)
            requests = _wait_for_erasures(tmp_path, env, 2, timeout=120)
        assert {r["policy"] for r in runs} == {"app.users", "app.sessions", "app.activity"}
        assert {r["trigger"] for r in runs} == {"beat"}
        assert all(r["status"] == "completed" for r in runs), runs
        assert {r["status"] for r in requests} == {"completed"}
        assert _ids(url, "users") == set(range(1, app.USERS + 1)) - set(app.CLOSED_LONG_AGO)
        fresh = {k for k in range(1, app.USERS * 5 + 1) if k % 5 in (4, 0)}
        assert _ids(url, "sessions") == {
            k for k in fresh if (k - 1) // 5 + 1 not in app.CLOSED_LONG_AGO
        }
        assert app.email(4) not in log.read_text()


def _wait_for_runs(cwd: Path, env: dict[str, str], count: int, timeout: float) -> list[dict]:  # type: ignore[type-arg]
    import time

    deadline = time.monotonic() + timeout
    found: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        found = gdpr(cwd, env, "retention", "history") or []
        done = [r for r in found if r["status"] != "running"]
        if len(done) >= count:
            return done
        time.sleep(1)
    raise AssertionError(f"retention runs did not finish in {timeout} s: {found}")


def _wait_for_erasures(cwd: Path, env: dict[str, str], count: int, timeout: float) -> list[dict]:  # type: ignore[type-arg]
    import time

    deadline = time.monotonic() + timeout
    found: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        found = gdpr(cwd, env, "request", "list") or []
        if len(found) >= count and all(r["status"] in {"completed", "failed"} for r in found):
            return found
        time.sleep(1)
    raise AssertionError(f"erasures did not finish in {timeout} s: {found}")
