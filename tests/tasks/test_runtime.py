"""The worker process's runtime: a broken sources manifest fails the request it was
handed (one line in `last_error`), instead of leaving it queued behind a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from compliance.config import Settings
from compliance.db import Database
from compliance.errors import RetryableError
from compliance.models import DsrRequest, RequestKind
from compliance.worker import Outcome
from tasks import app as celery_app
from tasks import runtime
from tests.compliance.helpers import SMALL_MANIFEST, submit_request, write_small_manifest


@pytest.fixture
def configured(db: Database, settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    """The task runtime pointed at these settings and a small manifest (edit it at will)."""
    manifest = write_small_manifest(tmp_path / "sources")
    current = settings.with_overrides(sources=str(manifest))
    before = dict(celery_app._state)
    celery_app.configure(current)
    runtime.reset()
    yield current, manifest
    runtime.reset()
    celery_app._state.clear()
    celery_app._state.update(before)


def status_of(db: Database, request: DsrRequest) -> DsrRequest:
    with db.session() as session:
        return session.get_one(DsrRequest, request.id)


def test_a_request_whose_manifest_names_a_missing_table_fails_with_that_line(
    db: Database, configured: tuple[Settings, Path]
) -> None:
    settings, manifest = configured
    created = submit_request(db, settings, RequestKind.EXPORT)
    manifest.write_text(SMALL_MANIFEST + "\n[sources.app.tables.userz]\n", encoding="utf-8")
    assert runtime.run(created.id) == Outcome.FAILED
    failed = status_of(db, created)
    assert failed.status == "failed"
    assert (failed.last_error or "").startswith("sources.app.tables.userz: no table 'userz'")


def test_a_source_unreachable_while_loading_keeps_the_request_queued_for_a_retry(
    db: Database, configured: tuple[Settings, Path]
) -> None:
    settings, manifest = configured
    created = submit_request(db, settings, RequestKind.EXPORT)
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/app?connect_timeout=1"
    manifest.write_text(SMALL_MANIFEST.replace("sqlite:///app.db", unreachable))
    with pytest.raises(RetryableError):
        runtime.run(created.id)
    assert status_of(db, created).status == "queued"


def test_the_maintenance_sweep_needs_no_source_and_runs_with_a_broken_manifest(
    db: Database, configured: tuple[Settings, Path]
) -> None:
    from tasks.maintenance import sweep

    _, manifest = configured
    manifest.write_text('[sources.app]\nkind = "mongo"\n', encoding="utf-8")
    assert sweep() == {
        "released": 0,
        "redispatched": 0,
        "resumed": 0,
        "expired_holds": 0,
        "retention_parts": 0,
    }
