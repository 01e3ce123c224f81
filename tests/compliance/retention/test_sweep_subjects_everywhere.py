"""A subject-level policy erases a closed account in every source, through the cascade:
SQL (shop and CRM databases), S3 avatars and Redis keys leave zero residue for the
subject, and nobody else's rows, objects or keys change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.keyring import load_keyring
from compliance.models import RequestKind
from compliance.retention import sweep
from compliance.retention.sweep import SweepContext
from compliance.sources.registry import Registry, load_registry
from compliance.worker import Outcome, Worker, execute
from tasks.runtime import run_erasure
from tests.compliance.sources.sqlsample import snapshot
from tests.sample_app import external
from tests.sample_app.fixtures import SampleDatabases

pytestmark = [pytest.mark.s3, pytest.mark.redis]

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
POLICY = 'retention = { column = "closed_at", days = 365, scope = "subject" }\n'


@pytest.fixture
def everywhere(
    sample_dbs: SampleDatabases,
    settings: Settings,
    tmp_path: Path,
    s3_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> Iterator[tuple[Registry, Settings]]:
    engine = create_engine(sample_dbs.shop_url)
    with engine.begin() as conn:  # ada closed her account two years ago
        conn.execute(
            text("UPDATE users SET closed_at = :at WHERE id = 1"),
            {"at": NOW - timedelta(days=730)},
        )
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    external.seed_avatars(s3_endpoint, s3_bucket)
    external.seed_redis(redis_url)
    manifest = sample_dbs.manifest().replace(
        "[sources.shop.tables.users]\n", "[sources.shop.tables.users]\n" + POLICY
    )
    extra = external.external_manifest(
        s3_endpoint=s3_endpoint, bucket=s3_bucket, redis_url=redis_url, crm_url="http://x"
    )
    manifest += extra[: extra.index("[sources.crm]")]
    path = tmp_path / "sources.toml"
    path.write_text(manifest, encoding="utf-8")
    settings = settings.with_overrides(sources=str(path))
    keyring = load_keyring(settings)
    registry = load_registry(settings, environ=os.environ, pseudonym_key=keyring.pseudonym_key)
    yield registry, settings
    registry.close()
    client.flushdb()
    client.close()


def test_a_closed_account_leaves_nothing_anywhere_and_touches_no_one_else(
    everywhere: tuple[Registry, Settings],
    db: Database,
    sample_dbs: SampleDatabases,
    s3_endpoint: str,
    s3_bucket: str,
    redis_url: str,
) -> None:
    registry, settings = everywhere
    shop_before, crm_before = snapshot(sample_dbs.shop_url), snapshot(sample_dbs.crm_url)
    keyring = load_keyring(settings)
    dispatcher = RecordingDispatcher()
    ctx = SweepContext(settings, db, keyring, registry.sources, dispatcher, clock=lambda: NOW)

    run = sweep.run_inline(ctx, "shop.users")
    assert run.counts["dispatched"] == 1
    worker = Worker(
        settings=settings,
        db=db,
        keyring=keyring,
        sources=registry.sources,
        runners={RequestKind.ERASURE: run_erasure},
        clock=lambda: NOW,
    )
    [request_id] = dispatcher.dispatched
    assert execute(worker, request_id) == Outcome.COMPLETED

    assert (
        external.avatar_keys(s3_endpoint, s3_bucket) == set(external.AVATARS) - external.ADA_AVATARS
    )
    assert external.redis_keys(redis_url).isdisjoint(external.ADA_REDIS_KEYS)
    assert {"cart:2", "session:2:web", "recent:2", "tags:4"} <= external.redis_keys(redis_url)
    shop_after, crm_after = snapshot(sample_dbs.shop_url), snapshot(sample_dbs.crm_url)
    assert all(row["email"] != "ada@example.com" for row in shop_after["users"].values())
    for key, row in shop_before["users"].items():
        if key != (1,):
            # bob was referred by ada: that reference is detached, nothing else changes
            expected = {**row, "referred_by": None} if row["referred_by"] == 1 else row
            assert shop_after["users"][key] == expected
    assert [r for r in crm_after["customers"].values() if r["app_user_id"] == 1] == []
    assert len(crm_after["customers"]) == len(crm_before["customers"]) - 1
    again = sweep.run_inline(ctx, "shop.users")
    assert (again.counts["dispatched"], again.counts["in_progress"]) == (0, 0)
