"""Run real `gdpr` processes (CLI commands and Celery workers) for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

GDPR = str(Path(sys.executable).with_name("gdpr"))


def environment(base: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """A `gdpr` environment under `base`. Unless `extra` names GDPR_SOURCES, it has one
    small SQLite source answering email and user_id: requests no source can look up
    are refused at submission."""
    from tests.compliance.helpers import write_small_manifest

    env = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
    env.update({"GDPR_HOME": str(base / ".gdpr"), "GDPR_OPERATOR": "alice"})
    if "GDPR_SOURCES" not in extra:
        env["GDPR_SOURCES"] = str(write_small_manifest(base / "small-source"))
    env.update(extra)
    return env


def production_environment(base: Path, pg_url: str, redis_url: str) -> dict[str, str]:
    """PostgreSQL control database, Redis broker (emptied) and a configured keyring."""
    import redis

    from tests.conftest import make_test_keys

    redis.Redis.from_url(redis_url).flushdb()
    keys = make_test_keys()
    return environment(
        base,
        {
            "GDPR_DATABASE_URL": pg_url,
            "GDPR_BROKER_URL": redis_url,
            "GDPR_KEYS": keys["keys"],
            "GDPR_PSEUDONYM_KEY": keys["pseudonym_key"],
        },
    )


def as_operator(
    env: Mapping[str, str], name: str, logins: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`env` acting as operator `name`: on PostgreSQL through its own database login
    (`logins`: the `pg_operators` fixture), on the embedded database by GDPR_OPERATOR."""
    if logins is None:
        return {**env, "GDPR_OPERATOR": name}
    return {**env, "GDPR_DATABASE_URL": logins[name]}


def gdpr(cwd: Path, env: Mapping[str, str], *args: str, check: bool = True) -> Any:
    """Run one `gdpr ... --json` command; return its parsed output."""
    done = subprocess.run(
        [GDPR, *args, "--json"],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"gdpr {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return json.loads(done.stdout) if done.stdout.strip() else None


@contextmanager
def running_worker(
    cwd: Path, env: Mapping[str, str], log: Path, *extra: str, options: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process (`gdpr [options] worker ... [extra]`); stopped (or
    killed) when the block ends."""
    handle = log.open("ab")
    process = subprocess.Popen(
        [GDPR, *options, "worker", "-c", "1", "-l", "INFO", *extra],
        cwd=cwd,
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_text(log, "ready.", timeout=60)
        yield process
    finally:
        stop(process)
        handle.close()


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise AssertionError(f"{text!r} not seen in {path} within {timeout}s:\n{tail}")


def wait_for_status(
    cwd: Path, env: Mapping[str, str], request_id: str, statuses: set[str], timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    shown: dict[str, Any] = {}
    while time.monotonic() < deadline:
        shown = gdpr(cwd, env, "request", "show", request_id, check=False) or {}
        if shown.get("status") in statuses:
            return shown
        time.sleep(0.5)
    raise AssertionError(f"request {request_id} stuck in {shown.get('status')}: {shown}")
