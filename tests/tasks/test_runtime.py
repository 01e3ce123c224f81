"""The worker process's runtime: a broken sources manifest fails the request it was
handed (one line in `last_error`), instead of leaving it queued behind a traceback; an
unreachable source keeps it queued with the reason, the attempt and the next try."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from compliance import queries
from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.errors import RetryableError
from compliance.lifecycle import Event, transition
from compliance.models import AuditEvent, DsrRequest, RequestKind
from compliance.worker import Outcome
from tasks import app as celery_app
from tasks import runtime
from tests.compliance.helpers import NOW, SMALL_MANIFEST, submit_request, write_small_manifest


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


UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/app?connect_timeout=1"


def test_a_source_unreachable_while_loading_keeps_the_request_queued_with_why_and_when(
    db: Database, configured: tuple[Settings, Path]
) -> None:
    settings, manifest = configured
    created = submit_request(db, settings, RequestKind.EXPORT)
    manifest.write_text(SMALL_MANIFEST.replace("sqlite:///app.db", UNREACHABLE))
    for _ in range(2):
        with pytest.raises(RetryableError):
            runtime.run(created.id, retry_in=80)
    waiting = status_of(db, created)
    assert (waiting.status, waiting.attempts) == ("queued", 2)
    assert waiting.retry_at is not None
    seen_at = waiting.retry_at - timedelta(seconds=80)
    assert queries.trouble(waiting, seen_at) == (
        "retrying: source app: database unavailable or timed out (connection to server at"
        ' "127.0.0.1", port 1 failed: Connection refused) (attempt 2, next in 80 s)'
    )
    with db.session() as session:
        deferred = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "request.defer")
        ).all()
    assert [e.details["error"] for e in deferred] == ["source app", "source app"]
    assert "ada" not in json.dumps([e.details for e in deferred])


def test_list_and_show_say_why_a_request_waits_and_when_it_is_tried_next(
    db: Database, configured: tuple[Settings, Path]
) -> None:
    settings, manifest = configured
    created = submit_request(db, settings, RequestKind.EXPORT)
    manifest.write_text(SMALL_MANIFEST.replace("sqlite:///app.db", UNREACHABLE))
    with pytest.raises(RetryableError):
        runtime.run(created.id, retry_in=300)
    listed = gdpr(db, settings, "request", "list")
    assert "retrying: source app: database unavailable" in listed.output
    assert "(attempt 1, next in 5 min)" in listed.output
    shown = json.loads(gdpr(db, settings, "request", "show", str(created.id), "--json").stdout)
    assert shown["trouble"].startswith("retrying: source app: database unavailable")
    assert (shown["attempts"], shown["status"]) == (1, "queued")
    assert shown["retry_at"] is not None


def test_a_continued_chunk_whose_sources_cannot_load_is_released_with_why_and_when(
    db: Database, configured: tuple[Settings, Path]
) -> None:
    settings, manifest = configured
    created = submit_request(db, settings, RequestKind.EXPORT)
    with db.session() as session:  # a worker claimed it and ran its first chunk
        transition(session, created.id, Event.CLAIM, actor="worker", now=NOW)
        session.get_one(DsrRequest, created.id).attempts = 1
    manifest.write_text(SMALL_MANIFEST.replace("sqlite:///app.db", UNREACHABLE))
    with pytest.raises(RetryableError):
        runtime.run(created.id, 1, retry_in=30)
    released = status_of(db, created)
    assert (released.status, released.lease_until) == ("queued", None)
    assert (released.last_error or "").startswith("source app: database unavailable")
    assert released.retry_at is not None
    with pytest.raises(RetryableError):  # a chunk of a claim that is gone changes nothing
        runtime.run(created.id, 1, retry_in=600)
    again = status_of(db, created)
    assert (again.attempts, again.retry_at) == (1, released.retry_at)


def gdpr(db: Database, settings: Settings, *args: str) -> Result:
    app = App()
    app._cache.update(settings=settings, db=db)
    app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
    return CliRunner().invoke(cli, list(args), obj=app)


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
