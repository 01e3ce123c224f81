"""Beat's alerts task: the worker's runtime evaluates and sends, once per condition; a
broken sources manifest leaves retention unchecked but every other alert still goes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.models import DsrRequest, DsrStep
from tasks import app as celery_app
from tasks import maintenance, runtime
from tests.compliance.helpers import SMALL_MANIFEST, write_small_manifest
from tests.support.webhook_server import WebhookServer


@pytest.fixture
def hook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def configured(
    db: Database, settings: Settings, tmp_path: Path, hook: WebhookServer
) -> Iterator[Path]:
    manifest = write_small_manifest(tmp_path / "sources")
    current = settings.with_overrides(
        sources=str(manifest), alert_webhook_url=hook.url, alert_digest_hour=23
    )
    before = dict(celery_app._state)
    celery_app.configure(current)
    runtime.reset()
    yield manifest
    runtime.reset()
    celery_app._state.clear()
    celery_app._state.update(before)


def _failed_steps(db: Database, count: int) -> None:
    now, rid = utcnow(), uuid.uuid4()
    with db.session() as session:
        session.add(
            DsrRequest(
                id=rid,
                kind="export",
                status="failed",
                subject="ps_" + "0" * 32,
                submitted_by="alice",
                submitted_at=now,
                due_at=now.replace(year=now.year + 1),
                updated_at=now,
            )
        )
        session.flush()
        for n in range(count):
            session.add(
                DsrStep(
                    request_id=rid,
                    source=f"s{n}",
                    action="export",
                    status="failed",
                    finished_at=now,
                )
            )


def test_the_beat_task_sends_each_alert_once(
    db: Database, configured: Path, hook: WebhookServer
) -> None:
    _failed_steps(db, 10)
    first = maintenance.check_alerts()
    assert (first["raised"], first["failed"]) == (1, 0)
    assert maintenance.check_alerts()["raised"] == 0
    alerts = [t for t in hook.texts if not t.startswith("*daily digest")]  # at 23:00 UTC
    assert len(alerts) == 1
    assert alerts[0].startswith("*10 request steps failed in the last hour*")


def test_a_broken_manifest_leaves_retention_unchecked_and_the_rest_still_alerts(
    db: Database, configured: Path, hook: WebhookServer
) -> None:
    configured.write_text(SMALL_MANIFEST + "\n[sources.app.tables.userz]\n", encoding="utf-8")
    _failed_steps(db, 10)
    assert maintenance.check_alerts()["raised"] == 1
    assert [t for t in hook.texts if not t.startswith("*daily digest")] != []
