"""A real worker serves /metrics for its whole pool, and logs JSON lines that carry the
request they were logged for; neither ever shows an email address."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.support.services import free_port
from tests.tasks.workers import environment, gdpr, running_worker, wait_for_status

pytestmark = pytest.mark.slow

EMAIL = "ada@example.com"


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        return str(answer.read().decode())


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_worker_pool_serves_its_metrics_and_the_request_gauges(tmp_path: Path) -> None:
    env = environment(tmp_path, {})
    port = free_port()
    with running_worker(
        tmp_path, env, tmp_path / "worker.log", "-c", "2", "--metrics-port", str(port)
    ):
        before = _scrape(port)
        export = gdpr(tmp_path, env, "request", "export", "--email", EMAIL)
        erasure = gdpr(tmp_path, env, "request", "erase", "--email", EMAIL)
        gdpr(tmp_path, env | {"GDPR_OPERATOR": "bob"}, "request", "approve", erasure["id"])
        for request in (export, erasure):
            done = wait_for_status(tmp_path, env, request["id"], {"completed", "failed"})
            assert done["status"] == "completed", done["last_error"]
        after = _scrape(port)
    completed = 'gdpr_requests{kind="%s",status="completed"}'
    assert (_value(before, completed % "export"), _value(after, completed % "export")) == (0, 1)
    assert (_value(before, completed % "erasure"), _value(after, completed % "erasure")) == (0, 1)
    assert _value(after, 'gdpr_requests_overdue{kind="erasure"}') == 0
    # recorded by the pool's children, served by the main process
    erased = 'gdpr_step_duration_seconds_count{action="erase",kind="erasure",source="app"}'
    exported = 'gdpr_step_duration_seconds_count{action="export",kind="export",source="app"}'
    assert _value(before, erased) == 0 and _value(after, erased) == 1
    assert _value(before, exported) == 0 and _value(after, exported) == 1
    assert EMAIL not in after and "ps_" not in after  # no subject, not even a pseudonym
    assert list((tmp_path / ".gdpr" / "metrics" / f"worker-{port}").glob("*.db"))
    assert f"metrics: http://127.0.0.1:{port}/metrics" in (tmp_path / "worker.log").read_text()


def test_json_log_lines_parse_and_carry_the_request_they_were_logged_for(tmp_path: Path) -> None:
    env = environment(tmp_path, {"GDPR_LOG_FORMAT": "json"})
    erasure = gdpr(tmp_path, env, "request", "erase", "--email", EMAIL)
    gdpr(tmp_path, env | {"GDPR_OPERATOR": "bob"}, "request", "approve", erasure["id"])
    log = tmp_path / "worker.log"
    with running_worker(tmp_path, env, log, "-c", "2", options=["-v"]):
        done = wait_for_status(tmp_path, env, erasure["id"], {"completed", "failed"})
    assert done["status"] == "completed", done["last_error"]
    text = log.read_text()
    assert EMAIL not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert {"time", "level", "event", "logger"} <= set(lines[0])
    ours = [line for line in lines if str(line["logger"]).startswith("gdpr.")]
    events = {line["event"] for line in ours}
    assert {"dsr.run.started", "mail.written", "dsr.run.completed"} <= events
    # mail.written names no request itself: the id is the one bound while the task ran
    assert {line["request_id"] for line in ours if line["event"] != "keyring.development"} == {
        erasure["id"]
    }


def test_a_worker_whose_metrics_port_is_taken_exits_5_with_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.tasks.workers import GDPR

    env = environment(tmp_path, {})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [GDPR, "worker", "--metrics-port", str(port)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 5
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use; choose"
        " another with --metrics-port or GDPR_METRICS_PORT"
    ]
    assert "celery@" not in done.stdout + done.stderr  # Celery never started
