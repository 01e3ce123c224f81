"""The whole sample application on the production stack, through the CLI and a real worker:
PostgreSQL (control database and the shop/CRM), Redis (broker and the cart cache), the local
S3 server (avatars) and a third-party HTTP API. Then a scan for the subject's personal data
in everything the system itself keeps: logs, audit rows, request rows, broker payloads."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.sample_app import external
from tests.sample_app.fixtures import SampleDatabases
from tests.support.crm_server import CrmServer
from tests.support.services import REDIS_CACHE_DB
from tests.tasks.workers import (
    as_operator,
    gdpr,
    production_environment,
    running_worker,
    wait_for_status,
)

pytestmark = pytest.mark.slow

ADA = "ada@example.com"
PERSONAL = [b"ada@example.com", b"Ada Lovelace", b"ada-web-token"]


@pytest.fixture
def crm() -> Iterator[CrmServer]:
    with CrmServer() as server:
        external.seed_crm(server)
        yield server


def test_export_then_erasure_across_sql_s3_redis_and_http(
    tmp_path: Path,
    pg_operators: dict[str, str],
    pg_url: str,
    redis_url: str,
    s3_endpoint: str,
    s3_bucket: str,
    pg_sample_dbs: SampleDatabases,
    crm: CrmServer,
) -> None:
    cache_url = redis_url.rsplit("/", 1)[0] + f"/{REDIS_CACHE_DB}"
    redis.Redis.from_url(cache_url).flushdb()
    external.seed_redis(cache_url)
    external.seed_avatars(s3_endpoint, s3_bucket)
    manifest = pg_sample_dbs.manifest() + external.external_manifest(
        s3_endpoint=s3_endpoint, bucket=s3_bucket, redis_url=cache_url, crm_url=crm.url
    ).replace('[sources.crm]\nkind = "http"', '[sources.helpdesk]\nkind = "http"')
    (tmp_path / "sources.toml").write_text(manifest)
    env = production_environment(tmp_path, pg_url, redis_url) | {
        "GDPR_SOURCES": str(tmp_path / "sources.toml"),
        "CRM_TOKEN": crm.token,
    }
    log = tmp_path / "worker.log"

    with running_worker(tmp_path, env, log):
        export = gdpr(tmp_path, env, "request", "export", "--email", ADA, "--ticket", "T-7")
        done = wait_for_status(tmp_path, env, export["id"], {"completed", "failed"}, 120)
        assert done["status"] == "completed", done["last_error"]
        names = exported_names(tmp_path, env)
        erasure = gdpr(tmp_path, env, "request", "erase", "--email", ADA)
        gdpr(tmp_path, as_operator(env, "bob", pg_operators), "request", "approve", erasure["id"])
        erased = wait_for_status(tmp_path, env, erasure["id"], {"completed", "failed"}, 120)
    assert erased["status"] == "completed", erased["last_error"]

    assert "data/shop/users.json" in names
    assert {f"files/avatars/{key}" for key in external.ADA_AVATARS} <= names
    assert any(name.startswith("data/cache/") for name in names)
    assert any(name.startswith("data/helpdesk/") for name in names)
    assert "index.html" in names and "manifest.json" in names

    assert external.avatar_keys(s3_endpoint, s3_bucket) == {"avatars/2/me.png"}
    left = external.redis_keys(cache_url)
    assert not left & external.ADA_REDIS_KEYS
    assert {"cart:2", "session:2:web", "recent:2", "cart:3", "tags:4"} <= left
    assert ADA not in external.crm_emails(crm)
    assert {"bob@example.com", "dee@example.com"} <= external.crm_emails(crm)
    shop = create_engine(pg_sample_dbs.shop_url)
    with shop.connect() as conn:
        users = {row[0] for row in conn.execute(text("SELECT id FROM users"))}
    shop.dispose()
    assert 1 not in users and {2, 3} <= users

    assert_no_personal_data(log.read_bytes(), "worker log")
    assert_no_personal_data(control_database_dump(pg_url), "control database")
    assert_no_personal_data(broker_dump(redis_url), "broker")


def exported_names(cwd: Path, env: dict[str, str]) -> set[str]:
    package = next(p for p in (cwd / ".gdpr" / "objects").rglob("*.zip.enc"))
    out = cwd / "export.zip"
    gdpr(cwd, env, "export", "decrypt", str(package), "-o", str(out))
    with zipfile.ZipFile(io.BytesIO(out.read_bytes())) as archive:
        return set(archive.namelist())


def control_database_dump(url: str) -> bytes:
    engine = create_engine(url)
    tables = ["dsr_request", "dsr_identity", "dsr_step", "audit_event", "download_link",
              "export_package", "suppression"]  # fmt: skip
    chunks = []
    with engine.connect() as conn:
        for table in tables:
            rows = conn.execute(text(f"SELECT * FROM {table}")).all()
            chunks.append(json.dumps([list(map(str, row)) for row in rows]).encode())
    engine.dispose()
    return b"\n".join(chunks)


def broker_dump(url: str) -> bytes:
    client = redis.Redis.from_url(url)
    chunks = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"list":
            chunks.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            chunks.extend(client.hvals(key))
        elif kind == b"string":
            chunks.append(client.get(key) or b"")
        chunks.append(key)
    client.close()
    return b"\n".join(chunks)


def assert_no_personal_data(blob: bytes, where: str) -> None:
    for needle in PERSONAL:
        assert needle not in blob, f"{needle!r} found in the {where}"
