"""The daily audit checkpoint task: beat's entry point writes the chain's head to the
installation's storage once per head and returns its PII-free summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from compliance import audit, checkpoints
from compliance.config import Settings
from compliance.db import Database, utcnow
from exporters.storage import open_storage
from tasks import app as celery_app
from tasks import runtime
from tasks.maintenance import checkpoint_audit


@pytest.fixture
def configured(db: Database, settings: Settings) -> Iterator[Settings]:
    before = dict(celery_app._state)
    celery_app.configure(settings)
    runtime.reset()
    yield settings
    runtime.reset()
    celery_app._state.clear()
    celery_app._state.update(before)


def test_the_task_writes_one_checkpoint_per_head(db: Database, configured: Settings) -> None:
    assert checkpoint_audit.apply().get() == {"written": False}  # an empty chain
    with db.session() as session:
        audit.record(session, actor="alice", action="test.event", now=utcnow())
    first = checkpoint_audit.apply().get()
    assert first["written"] is True and first["events"] == 1
    assert checkpoint_audit.apply().get() == {**first, "written": False}
    storage = open_storage(configured)
    assert list(storage.keys(checkpoints.PREFIX)) == [first["key"]]


def test_a_new_checkpoint_is_posted_to_the_alert_channels_once(
    db: Database, settings: Settings
) -> None:
    from tests.support.webhook_server import WebhookServer

    before = dict(celery_app._state)
    with WebhookServer() as hook:
        celery_app.configure(settings.with_overrides(alert_webhook_url=hook.url))
        runtime.reset()
        try:
            with db.session() as session:
                audit.record(session, actor="alice", action="test.event", now=utcnow())
            first = checkpoint_audit.apply().get()
            checkpoint_audit.apply().get()  # the same head: nothing new, nothing posted
        finally:
            runtime.reset()
            celery_app._state.clear()
            celery_app._state.update(before)
    [posted] = hook.texts
    assert f"event {first['seq']}" in posted and first["hash"] in posted
