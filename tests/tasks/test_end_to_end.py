"""A request submitted through the CLI is run by a real Celery worker process."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.tasks.workers import (
    as_operator,
    environment,
    gdpr,
    production_environment,
    running_worker,
    wait_for_status,
)

pytestmark = pytest.mark.slow


def test_embedded_defaults_run_an_export_and_an_erasure_end_to_end(tmp_path: Path) -> None:
    env = environment(tmp_path, {})
    export = gdpr(tmp_path, env, "request", "export", "--email", "ada@example.com")
    erasure = gdpr(tmp_path, env, "request", "erase", "--email", "ada@example.com")
    gdpr(tmp_path, env | {"GDPR_OPERATOR": "bob"}, "request", "approve", erasure["id"])
    with running_worker(tmp_path, env, tmp_path / "worker.log"):
        done_export = wait_for_status(tmp_path, env, export["id"], {"completed", "failed"})
        done_erasure = wait_for_status(tmp_path, env, erasure["id"], {"completed", "failed"})
    assert done_export["status"] == "completed", done_export["last_error"]
    assert done_erasure["status"] == "completed", done_erasure["last_error"]
    assert done_erasure["receipt"] is not None
    logs = (tmp_path / "worker.log").read_text()
    assert "ada@example.com" not in logs


def test_postgres_and_redis_run_an_approved_erasure_end_to_end(
    tmp_path: Path, pg_operators: dict[str, str], pg_url: str, redis_url: str
) -> None:
    env = production_environment(tmp_path, pg_url, redis_url)
    created = gdpr(tmp_path, env, "request", "erase", "--email", "ada@example.com")
    approved = gdpr(
        tmp_path, as_operator(env, "bob", pg_operators), "request", "approve", created["id"]
    )
    assert approved["status"] == "queued"
    # the message is waiting in Redis: it carries the request id and nothing personal
    payloads = b" ".join(redis.Redis.from_url(redis_url).lrange("requests", 0, -1))
    assert created["id"].encode() in payloads
    assert b"ada@example.com" not in payloads
    with running_worker(tmp_path, env, tmp_path / "worker.log"):
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"})
    assert done["status"] == "completed", done["last_error"]
    assert "ada@example.com" not in (tmp_path / "worker.log").read_text()


def test_a_dry_run_erasure_needs_no_approval_reports_counts_and_changes_nothing(
    tmp_path: Path,
) -> None:
    from sqlalchemy import create_engine, text

    from tests.sample_app import schema

    shop, crm = (f"sqlite:///{tmp_path / name}" for name in ("shop.db", "crm.db"))
    engines = [create_engine(shop), create_engine(crm)]
    schema.create(*engines)
    (tmp_path / "sources.toml").write_text(schema.manifest(shop, crm))
    env = environment(tmp_path, {"GDPR_SOURCES": str(tmp_path / "sources.toml")})
    created = gdpr(tmp_path, env, "request", "erase", "--email", "ada@example.com", "--dry-run")
    assert created["status"] == "queued"
    with running_worker(tmp_path, env, tmp_path / "worker.log"):
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"})
    assert done["status"] == "completed", done["last_error"]
    assert "users" in str(done["receipt"])
    with engines[0].connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE id = 1")).scalar_one() == 1
    for engine in engines:
        engine.dispose()
    assert not list((tmp_path / ".gdpr" / "outbox").glob("*.eml"))


def test_a_worker_with_a_broken_manifest_exits_5_with_one_line_before_celery_starts(
    tmp_path: Path,
) -> None:
    import subprocess

    from tests.tasks.workers import GDPR

    (tmp_path / "sources.toml").write_text('[sources.a]\nkind = "mongo"\n[sources.b]\nurl = "x"\n')
    env = environment(tmp_path, {"GDPR_SOURCES": str(tmp_path / "sources.toml")})
    done = subprocess.run(
        [GDPR, "worker", "-c", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 5
    lines = [line for line in done.stderr.splitlines() if "keyring.development" not in line]
    assert lines == [
        "error: 2 problems in the sources manifest: sources.a: unknown kind 'mongo'; known"
        " kinds: http, objectstore, redis, sql | sources.b: missing required key 'kind'"
    ]
    assert "ready" not in done.stdout + done.stderr


def test_submitting_with_no_source_registered_exits_5_and_stores_nothing(tmp_path: Path) -> None:
    import subprocess

    from tests.tasks.workers import GDPR

    env = environment(tmp_path, {"GDPR_SOURCES": ""})
    args = [GDPR, "request", "erase", "--email", "ada@example.com"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (5, "")
    assert done.stderr.splitlines()[-1].startswith("error: no data source is registered")
    assert gdpr(tmp_path, env, "request", "list") == []
