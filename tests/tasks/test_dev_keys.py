"""A worker and the download service on a PostgreSQL control database refuse the
development keyring (missing, or copied from its file into GDPR_KEYS) unless told
`--insecure-dev-keys`; told, they run on it."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from compliance.config import Settings
from compliance.keyring import DEV_KEYRING_FILE, load_keyring
from tests.support.services import free_port
from tests.tasks.workers import (
    GDPR,
    gdpr,
    production_environment,
    running_worker,
    wait_for_status,
    wait_for_text,
)

pytestmark = pytest.mark.slow


def dev_key_environment(tmp_path: Path, pg_url: str, redis_url: str) -> dict[str, str]:
    """Production settings, but GDPR_KEYS copied from the development keyring file."""
    env = production_environment(tmp_path, pg_url, redis_url)
    home = Path(env["GDPR_HOME"])
    load_keyring(Settings(home=home))  # embedded: writes the development keyring file
    dev = json.loads((home / DEV_KEYRING_FILE).read_text())
    return env | {"GDPR_KEYS": dev["keys"], "GDPR_PSEUDONYM_KEY": dev["pseudonym_key"]}


def refused(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GDPR, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", [["worker", "-c", "1"], ["serve", "--port", "1"]])
def test_a_service_refuses_development_keys_on_postgresql_in_one_line(
    tmp_path: Path, pg_settings: object, pg_url: str, redis_url: str, command: list[str]
) -> None:
    env = dev_key_environment(tmp_path, pg_url, redis_url)
    done = refused(tmp_path, env, *command)
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--insecure-dev-keys" in lines[0]
    missing = {k: v for k, v in env.items() if k not in {"GDPR_KEYS", "GDPR_PSEUDONYM_KEY"}}
    done = refused(tmp_path, missing, *command)
    assert done.returncode == 5 and "GDPR_KEYS" in done.stderr


def test_a_worker_told_insecure_dev_keys_runs_requests_on_them(
    tmp_path: Path, pg_settings: object, pg_url: str, redis_url: str
) -> None:
    env = dev_key_environment(tmp_path, pg_url, redis_url)
    created = gdpr(tmp_path, env, "request", "export", "--email", "ada@example.com")
    log = tmp_path / "worker.log"
    with running_worker(tmp_path, env, log, "--insecure-dev-keys"):
        done = wait_for_status(tmp_path, env, created["id"], {"completed", "failed"})
    assert done["status"] == "completed", done["last_error"]
    assert "keyring.development.allowed" in log.read_text()


def test_the_download_service_told_insecure_dev_keys_serves(
    tmp_path: Path, pg_settings: object, pg_url: str, redis_url: str
) -> None:
    env = dev_key_environment(tmp_path, pg_url, redis_url)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        server = subprocess.Popen(
            [GDPR, "serve", "--port", str(port), "--insecure-dev-keys"],
            cwd=tmp_path,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_text(log, "listening on", timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
