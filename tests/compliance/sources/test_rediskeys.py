"""The redis connector against the real Redis server (database 9, flushed per test)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from compliance.config import Settings
from compliance.errors import ManifestError, RetryableError, SourceUnavailableError
from compliance.identities import Identities, Identity
from compliance.sources.base import Action, DataSource, Disposition, RowsItem
from compliance.sources.rediskeys import RedisKeysSource, build
from tests.compliance.sources.chunks import erase_chunks as erase_all

pytestmark = pytest.mark.redis

ADA = Identities.of([Identity("user_id", "1"), Identity("email", "ada@example.com")])
PATTERNS = [
    "cart:{user_id}",
    "session:{user_id}:*",
    "recent:{user_id}",
    "tags:{user_id}",
    "score:{user_id}",
    "events:{user_id}",
]


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def source(redis_url: str, r: redis.Redis) -> Iterator[RedisKeysSource]:
    built = build("cache", {"url": redis_url, "patterns": PATTERNS, "scan_count": 100}, Settings())
    yield built
    built.close()


def seed(r: redis.Redis, user: str) -> None:
    r.hset(f"cart:{user}", mapping={"sku-1": "2", "sku-9": "1"})
    r.set(f"session:{user}:abc", "token-a", ex=600)
    r.set(f"session:{user}:def", "token-b")
    r.rpush(f"recent:{user}", "p3", "p1", "p2")
    r.sadd(f"tags:{user}", "vip", "beta")
    r.zadd(f"score:{user}", {"quiz": 7.5, "game": 3})
    r.xadd(f"events:{user}", {"kind": "login"}, id="1-1")


def all_keys(r: redis.Redis) -> set[str]:
    return {k.decode() for k in r.scan_iter(count=1000)}


def rows_by_key(source: RedisKeysSource, identities: Identities) -> dict[str, dict[str, Any]]:
    items = list(source.export(identities))
    assert all(isinstance(item, RowsItem) for item in items)
    return {row["key"]: row for item in items for row in item.rows}


def test_source_satisfies_the_data_source_protocol(source: RedisKeysSource) -> None:
    assert isinstance(source, DataSource)


def test_identity_types_are_the_fields_of_the_key_patterns(redis_url: str) -> None:
    patterns = ["cart:{user_id}", {"pattern": "basket:{custom:loyalty_no}:*"}]
    built = build("cache", {"url": redis_url, "patterns": patterns}, Settings())
    try:
        assert built.identity_types() == {"user_id", "custom:loyalty_no"}
    finally:
        built.close()


def test_export_reads_every_type_faithfully_and_only_the_subjects_keys(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    for user in ("1", "10", "2"):
        seed(r, user)
    rows = rows_by_key(source, ADA)
    assert set(rows) == {
        "cart:1", "session:1:abc", "session:1:def", "recent:1", "tags:1", "score:1", "events:1"
    }  # fmt: skip
    assert rows["cart:1"] == {"key": "cart:1", "type": "hash",
                              "value": {"sku-1": "2", "sku-9": "1"}, "ttl": None}  # fmt: skip
    assert rows["session:1:def"]["value"] == "token-b"
    assert 590 <= rows["session:1:abc"]["ttl"] <= 600
    assert rows["recent:1"]["value"] == ["p3", "p1", "p2"]
    assert rows["tags:1"]["value"] == ["beta", "vip"]
    assert rows["score:1"]["value"] == [["game", 3.0], ["quiz", 7.5]]
    assert rows["events:1"]["value"] == [{"id": "1-1", "fields": {"kind": "login"}}]
    assert {row["type"] for row in rows.values()} == {
        "hash", "string", "list", "set", "zset", "stream"
    }  # fmt: skip


def test_export_names_collections_by_pattern_never_by_value(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    seed(r, "1")
    assert [item.collection for item in source.export(ADA)] == PATTERNS


def test_export_keeps_binary_values_as_bytes(source: RedisKeysSource, r: redis.Redis) -> None:
    r.set("session:1:bin", b"\xff\x00\xfe")
    assert rows_by_key(source, ADA)["session:1:bin"]["value"] == b"\xff\x00\xfe"


def test_big_list_is_read_completely_in_pages(source: RedisKeysSource, r: redis.Redis) -> None:
    r.rpush("recent:1", *[str(i) for i in range(2500)])
    assert rows_by_key(source, ADA)["recent:1"]["value"] == [str(i) for i in range(2500)]


def test_plan_counts_keys_per_pattern_and_writes_nothing(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    seed(r, "1")
    seed(r, "10")
    before = all_keys(r)
    plan = source.plan(ADA, Action.ERASE)
    assert [(p.location, p.count) for p in plan.locations] == [
        ("cart:{user_id}", 1), ("session:{user_id}:*", 2), ("recent:{user_id}", 1),
        ("tags:{user_id}", 1), ("score:{user_id}", 1), ("events:{user_id}", 1),
    ]  # fmt: skip
    assert {p.disposition for p in plan.locations} == {Disposition.DELETE}
    assert all_keys(r) == before


def test_erase_unlinks_the_subjects_keys_only_and_verify_finds_none(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    for user in ("1", "10", "2"):
        seed(r, user)
    assert len(source.verify(ADA)) == 6
    assert sum(erase_all(source, ADA, 1000)) == 7
    assert not any(k.endswith(":1") or k.startswith("session:1:") for k in all_keys(r))
    assert len(all_keys(r)) == 14
    assert source.verify(ADA) == []
    assert erase_all(source, ADA, 1000) == [0]


def test_erase_of_many_keys_runs_in_bounded_batches(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    with r.pipeline() as pipe:
        for i in range(2500):
            pipe.set(f"session:1:{i}", "x")
            pipe.set(f"session:10:{i}", "y")
        pipe.execute()
    counts = erase_all(source, ADA, batch_size=500)
    assert sum(counts) == 2500
    assert len(counts) >= 5
    assert max(counts) < 500 + 200  # one SCAN page of overshoot at most
    assert len(all_keys(r)) == 2500


def test_erase_never_calls_keys(source: RedisKeysSource, r: redis.Redis) -> None:
    seed(r, "1")

    def calls(name: str) -> int:
        stats = r.info("commandstats").get(f"cmdstat_{name}", {})
        return int(stats.get("calls", 0))

    keys_before, scan_before = calls("keys"), calls("scan")
    erase_all(source, ADA, 1000)
    source.verify(ADA)
    assert calls("keys") == keys_before
    assert calls("scan") > scan_before


def test_glob_characters_in_an_identity_match_only_themselves(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    seed(r, "1")
    seed(r, "2")
    r.set("session:*:literal", "belongs to user '*'")
    star = Identities.of([Identity("user_id", "*"), Identity("user_id", "[12]"),
                          Identity("user_id", "?")])  # fmt: skip
    assert set(rows_by_key(source, star)) == {"session:*:literal"}
    assert sum(erase_all(source, star, 1000)) == 1
    assert len(all_keys(r)) == 14


def test_erase_resumes_from_a_checkpoint_and_restarts_a_foreign_cursor(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    seed(r, "1")
    first = source.erase(ADA, {}, batch_size=1)
    assert not first.done
    assert set(first.checkpoint) == {"next", "cursor", "run_id"}
    stale = {**first.checkpoint, "cursor": 987654, "run_id": "another-server"}
    assert sum(erase_all(source, ADA, 1000, stale)) == 6
    assert source.verify(ADA) == []


def test_subject_without_the_templated_identity_is_skipped(
    source: RedisKeysSource, r: redis.Redis
) -> None:
    seed(r, "1")
    only_email = Identities.of([Identity("email", "ada@example.com")])
    assert list(source.export(only_email)) == []
    assert source.erase(only_email, {}, 100).done
    assert len(all_keys(r)) == 7


def test_connection_refused_is_a_retryable_error_without_identities() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = build("cache", {"url": f"redis://127.0.0.1:{port}/0", "patterns": PATTERNS},
                   Settings())  # fmt: skip
    try:
        with pytest.raises(SourceUnavailableError) as caught:
            source.erase(ADA, {}, 100)
        with pytest.raises(SourceUnavailableError):
            [list(item.rows) for item in source.export(ADA)]  # rows are read lazily
    finally:
        source.close()
    assert isinstance(caught.value, RetryableError)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "session:1" not in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"url": ""}, r"sources\.cache\.url is missing or empty"),
        ({"url": "http://h"}, r"sources\.cache\.url must start with redis://"),
        ({"patterns": "cart:{user_id}"}, r"sources\.cache\.patterns is missing or empty"),
        ({"patterns": ["cart:*"]}, r"patterns\[0\] names no identity"),
        ({"patterns": ["cart:{uid}"]}, r"sources\.cache\.patterns\[0\] names an unknown identity"),
        ({"patterns": ["session:{user_id}*"]}, r"patterns\[0\]: put a separator after each field"),
        ({"scan_count": 0}, r"sources\.cache\.scan_count must be a number of at least 1"),
        ({"ttl": 5}, r"sources\.cache\.ttl is not a known setting"),
    ],
)
def test_build_refuses_a_bad_spec_naming_the_key(spec: dict[str, Any], message: str) -> None:
    full = {"url": "redis://127.0.0.1:6379/9", "patterns": PATTERNS}
    with pytest.raises(ManifestError, match=message):
        build("cache", {**full, **spec}, Settings())
