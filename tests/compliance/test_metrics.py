"""Metrics: the request gauges read from the control database at scrape time, and what the
work records, served over HTTP; labels never hold anything about a subject."""

from __future__ import annotations

import re
import secrets
import socket
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from compliance import metrics
from compliance.config import Settings
from compliance.db import Database
from compliance.errors import ConfigError
from compliance.models import DsrRequest
from tests.compliance.helpers import NOW
from tests.support.services import free_port


def _request(
    db: Database, kind: str, status: str, *, age_days: float, dry_run: bool = False
) -> None:
    submitted = NOW - timedelta(days=age_days)
    with db.session() as session:
        session.add(
            DsrRequest(
                id=uuid.uuid4(),
                kind=kind,
                status=status,
                subject="ps_" + secrets.token_hex(16),
                submitted_by="alice",
                submitted_at=submitted,
                due_at=submitted + timedelta(days=30),
                updated_at=submitted,
                dry_run=dry_run,
            )
        )


def _samples(collector: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in collector.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_request_gauges_count_by_kind_and_status_and_see_what_is_overdue(db: Database) -> None:
    _request(db, "erasure", "queued", age_days=40)  # overdue by ten days
    _request(db, "erasure", "awaiting_approval", age_days=3)
    _request(db, "erasure", "failed", age_days=35, dry_run=True)  # a dry run has no deadline
    _request(db, "export", "completed", age_days=90)  # finished: neither open nor overdue
    _request(db, "export", "running", age_days=1)
    found = _samples(metrics.RequestGauges(db, clock=lambda: NOW))
    assert found[("gdpr_requests", (("kind", "erasure"), ("status", "queued")))] == 1
    assert found[("gdpr_requests", (("kind", "erasure"), ("status", "failed")))] == 1
    assert found[("gdpr_requests", (("kind", "export"), ("status", "completed")))] == 1
    assert found[("gdpr_requests", (("kind", "export"), ("status", "cancelled")))] == 0
    assert found[("gdpr_requests_overdue", (("kind", "erasure"),))] == 1
    assert found[("gdpr_requests_overdue", (("kind", "export"),))] == 0
    oldest = "gdpr_requests_oldest_open_age_seconds"
    assert found[(oldest, (("kind", "erasure"),))] == pytest.approx(40 * 86400)
    assert found[(oldest, (("kind", "export"),))] == pytest.approx(86400)


def test_an_empty_control_database_shows_zeros_for_every_kind(db: Database) -> None:
    found = _samples(metrics.RequestGauges(db, clock=lambda: NOW))
    assert len([key for key in found if key[0] == "gdpr_requests"]) == 18  # 2 kinds x 9 states
    assert found.pop(("gdpr_control_database_up", ())) == 1
    assert set(found.values()) == {0}


def test_a_control_database_that_does_not_answer_shows_as_down_not_as_a_failed_scrape(
    tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    )
    unreachable = Database.connect(settings)
    try:
        found = _samples(metrics.RequestGauges(unreachable, clock=lambda: NOW))
    finally:
        unreachable.dispose()
    assert found == {("gdpr_control_database_up", ()): 0}


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_what_the_work_records_is_served_with_the_gauges_over_http(db: Database) -> None:
    _request(db, "erasure", "queued", age_days=40)
    server = metrics.serve(
        metrics.Exposed(metrics.RequestGauges(db, clock=lambda: NOW)),
        "127.0.0.1",
        free_port(),
        what="--metrics-port",
        env="GDPR_METRICS_PORT",
    )
    try:
        refused = 'gdpr_download_refusals_total{reason="expired"}'
        purged = 'gdpr_retention_purged_rows_total{policy="app.sessions"}'
        failed = 'gdpr_step_failures_total{action="erase",kind="erasure",source="crm"}'
        steps = 'gdpr_step_duration_seconds_count{action="erase",kind="erasure",source="crm"}'
        before = _scrape(server.port)
        metrics.download_refused("expired")
        metrics.rows_purged("app.sessions", 120)
        metrics.rows_purged("app.sessions", 0)
        metrics.step_failed("erasure", "crm", "erase")
        metrics.step_done("erasure", "crm", "erase", 2.5)
        after = _scrape(server.port)
    finally:
        server.stop()
    assert _value(after, refused) - _value(before, refused) == 1
    assert _value(after, purged) - _value(before, purged) == 120
    assert _value(after, failed) - _value(before, failed) == 1
    assert _value(after, steps) - _value(before, steps) == 1
    assert _value(after, 'gdpr_requests_overdue{kind="erasure"}') == 1


def test_metrics_on_a_taken_port_are_refused_in_one_line(db: Database) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as refused:
            metrics.serve(
                metrics.Exposed(), "127.0.0.1", port, what="--metrics-port", env="GDPR_METRICS_PORT"
            )
    assert str(refused.value) == (
        f"cannot serve metrics on 127.0.0.1:{port}: Address already in use; choose another"
        " with --metrics-port or GDPR_METRICS_PORT"
    )
