"""The sample application's data outside SQL: S3 avatars, Redis keys and the CRM API.

Subjects (as in the SQL part): user 1 ada@example.com (the subject under test), 2 bob,
3 cy, 4 dee. Seed with `seed_avatars`, `seed_redis`, `seed_crm`; read back with
`avatar_keys`, `redis_keys`, `crm_emails`; `external_manifest(...)` gives the
``sources.toml`` tables for the three sources, to append to the SQL part's manifest.
What belongs to ada: `ADA_AVATARS`, `ADA_REDIS_KEYS`, and her CRM record.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import redis

from tests.support.crm_server import CrmServer

USERS = {"1": "ada@example.com", "2": "bob@example.com", "3": "cy@example.com",
         "4": "dee@example.com"}  # fmt: skip

AVATARS = {
    "avatars/1/me.png": b"\x89PNG ada",
    "avatars/1/banner.jpg": b"\xff\xd8 ada banner",
    "avatars/2/me.png": b"\x89PNG bob",
}
ADA_AVATARS = {key for key in AVATARS if key.startswith("avatars/1/")}

ADA_REDIS_KEYS = {"cart:1", "session:1:web", "session:1:app", "recent:1", "tags:1"}
REDIS_PATTERNS = ["cart:{user_id}", "session:{user_id}:*", "recent:{user_id}", "tags:{user_id}"]

CRM_RECORDS = {
    "ada@example.com": {"email": "ada@example.com", "name": "Ada Lovelace", "tier": "gold"},
    "bob@example.com": {"email": "bob@example.com", "name": "Bob", "tier": "silver"},
    "dee@example.com": {"email": "dee@example.com", "name": "Dee", "tier": "bronze"},
}


# --- object store ---------------------------------------------------------------------------


def _s3(endpoint_url: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")


def seed_avatars(endpoint_url: str, bucket: str) -> dict[str, bytes]:
    """Upload the avatars (ada 2, bob 1) into an existing bucket."""
    client = _s3(endpoint_url)
    try:
        for key, body in AVATARS.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)
    finally:
        client.close()
    return dict(AVATARS)


def avatar_keys(endpoint_url: str, bucket: str) -> set[str]:
    client = _s3(endpoint_url)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}
    finally:
        client.close()


# --- redis ----------------------------------------------------------------------------------


def seed_redis(url: str) -> None:
    """Carts, sessions, recently viewed and tags; ada has two sessions, user 3 none."""
    client = redis.Redis.from_url(url)
    try:
        with client.pipeline() as pipe:
            for user in USERS:
                pipe.hset(f"cart:{user}", mapping={"sku-1": "1", f"sku-{user}0": user})
            pipe.set("session:1:web", "ada-web-token", ex=3600)
            pipe.set("session:1:app", "ada-app-token")
            pipe.set("session:2:web", "bob-web-token")
            pipe.rpush("recent:1", "p-3", "p-1")
            pipe.rpush("recent:2", "p-2")
            pipe.sadd("tags:1", "early-adopter", "newsletter")
            pipe.sadd("tags:4", "newsletter")
            pipe.execute()
    finally:
        client.close()


def redis_keys(url: str) -> set[str]:
    client = redis.Redis.from_url(url)
    try:
        return {key.decode() for key in client.scan_iter(count=1000)}
    finally:
        client.close()


# --- CRM API --------------------------------------------------------------------------------


def seed_crm(server: CrmServer) -> None:
    """Records for ada, bob and dee (cy is not a CRM contact)."""
    for email, record in CRM_RECORDS.items():
        server.records[email] = dict(record)
    server.activities["ada@example.com"] = [{"kind": "call", "at": "2026-01-05"}]


def crm_emails(server: CrmServer) -> set[str]:
    return set(server.records)


# --- manifest -------------------------------------------------------------------------------


def external_manifest(
    *,
    s3_endpoint: str,
    bucket: str,
    redis_url: str,
    crm_url: str,
    token_var: str = "CRM_TOKEN",  # noqa: S107  (the name of a variable, not a secret)
) -> str:
    """The manifest tables of the three sources; the CRM token comes from ``${token_var}``
    (set it to `CrmServer.token` in the environment the registry expands from)."""
    q = json.dumps
    patterns = ", ".join(q(p) for p in REDIS_PATTERNS)
    return f"""
[sources.avatars]
kind = "objectstore"
bucket = {q(bucket)}
endpoint_url = {q(s3_endpoint)}
prefixes = ["avatars/{{user_id}}/"]
purpose = "Profile pictures shown next to your name"
legal_basis = "Art. 6(1)(b) GDPR (contract)"

[sources.cache]
kind = "redis"
url = {q(redis_url)}
patterns = [{patterns}]
purpose = "Shopping cart, sign-in sessions and recommendations"
retention = "Sessions expire after one hour; carts after 30 days"

[sources.crm]
kind = "http"
base_url = {q(crm_url)}
auth_header = "Authorization"
auth_secret = "Bearer ${{{token_var}}}"
export = {{ method = "GET", path = "/subjects/{{email}}" }}
erase = {{ method = "DELETE", path = "/subjects/{{email}}" }}
purpose = "Customer support history"
recipients = ["ExampleCRM Inc. (processor)"]
"""
