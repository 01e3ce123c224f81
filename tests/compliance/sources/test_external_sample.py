"""The sample application's S3, Redis and CRM sources, built from their manifest tables:
erasing ada removes exactly her avatars, keys and CRM record, and a re-run is a no-op."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import redis

from compliance.config import Settings
from compliance.identities import Identities, parse_identity
from compliance.sources.base import Action, DataSource, FileItem, RowsItem
from compliance.sources.http import build as build_http
from compliance.sources.objectstore import build as build_objectstore
from compliance.sources.rediskeys import build as build_redis
from compliance.sources.templating import expand_env
from tests.sample_app import external
from tests.support.crm_server import CrmServer

pytestmark = [pytest.mark.s3, pytest.mark.redis]

ADA = Identities.of([parse_identity("email", "ada@example.com"), parse_identity("user_id", "1")])
FACTORIES = {"objectstore": build_objectstore, "redis": build_redis, "http": build_http}


@pytest.fixture
def crm() -> Iterator[CrmServer]:
    with CrmServer() as server:
        external.seed_crm(server)
        yield server


@pytest.fixture
def sources(
    s3_endpoint: str, s3_bucket: str, redis_url: str, crm: CrmServer
) -> Iterator[list[DataSource]]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    external.seed_avatars(s3_endpoint, s3_bucket)
    external.seed_redis(redis_url)
    text = external.external_manifest(
        s3_endpoint=s3_endpoint, bucket=s3_bucket, redis_url=redis_url, crm_url=crm.url
    )
    manifest = expand_env(tomllib.loads(text), {"CRM_TOKEN": crm.token}, "manifest")
    built: list[DataSource] = []
    for name, spec in manifest["sources"].items():
        rest = {k: v for k, v in spec.items() if k != "kind"}
        built.append(FACTORIES[spec["kind"]](name, rest, Settings()))
    yield built
    for source in built:
        source.close()
    client.flushdb()
    client.close()


def erase(source: DataSource) -> int:
    checkpoint: Mapping[str, Any] = {}
    total = 0
    while True:
        result = source.erase(ADA, checkpoint, 1000)
        total += result.deleted
        checkpoint = result.checkpoint
        if result.done:
            return total


def test_erasing_ada_removes_exactly_her_external_data(
    sources: list[DataSource], s3_endpoint: str, s3_bucket: str, redis_url: str, crm: CrmServer
) -> None:
    planned = {s.name: s.plan(ADA, Action.ERASE).total for s in sources}
    assert planned == {"avatars": 2, "cache": 5, "crm": 1}
    before = external.redis_keys(redis_url)
    assert {s.name: erase(s) for s in sources} == planned
    assert [r for s in sources for r in s.verify(ADA)] == []
    assert external.avatar_keys(s3_endpoint, s3_bucket) == set(external.AVATARS) - (
        external.ADA_AVATARS
    )
    assert external.redis_keys(redis_url) == before - external.ADA_REDIS_KEYS
    assert external.crm_emails(crm) == {"bob@example.com", "dee@example.com"}
    assert {s.name: erase(s) for s in sources} == {"avatars": 0, "cache": 0, "crm": 0}


def test_export_of_ada_carries_her_files_rows_and_art15_metadata(
    sources: list[DataSource],
) -> None:
    items = [item for s in sources for item in s.export(ADA)]
    files = {i.path for i in items if isinstance(i, FileItem)}
    rows = {(i.source, i.collection): list(i.rows) for i in items if isinstance(i, RowsItem)}
    assert files == external.ADA_AVATARS
    assert {row["key"] for (src, _), rs in rows.items() if src == "cache" for row in rs} == (
        external.ADA_REDIS_KEYS
    )
    assert rows[("crm", "/subjects/{email}")] == [external.CRM_RECORDS["ada@example.com"]]
    crm_item = next(i for i in items if i.source == "crm")
    assert crm_item.meta.recipients == ("ExampleCRM Inc. (processor)",)
