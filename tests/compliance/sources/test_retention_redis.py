"""Retention on the redis connector, against the real Redis server.

Each test works under its own key prefix and removes its keys afterwards (the database is
shared). Idle time is set without waiting: RESTORE ... IDLETIME gives a key the idle time
the test needs, exactly as the server tracks it.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from compliance.config import Settings
from compliance.errors import ManifestError, SourceRefusedError, SourceUnavailableError
from compliance.identities import Identities, Identity
from compliance.retention.policy import Held, Limits, Policy, PolicyKind, PurgeResult, Retaining
from compliance.sources.redis_retention import Verdict, decide, glob_regex
from compliance.sources.rediskeys import RedisKeysSource, build

pytestmark = pytest.mark.redis

DAY = 86_400
ADA = Identities.of([Identity("user_id", "1")])


@dataclass(frozen=True)
class Keyspace:
    """A test's corner of the database: its prefix, a client and a source over it."""

    prefix: str
    r: redis.Redis[bytes]
    source: RedisKeysSource

    def key(self, rest: str) -> str:
        return f"{self.prefix}{rest}"

    def names(self) -> set[str]:
        found = self.r.scan_iter(match=f"{self.prefix}*", count=1000)
        return {k.decode()[len(self.prefix) :] for k in found}

    def age(self, rest: str, days: float) -> None:
        """Make the key idle for `days` (keeping its value and TTL)."""
        key = self.key(rest)
        payload, ttl = self.r.dump(key), max(0, int(self.r.pttl(key)))
        self.r.restore(key, ttl, payload, replace=True, idletime=int(days * DAY))

    @property
    def policy(self) -> Policy:
        return self.source.retention_policies()[0]


@pytest.fixture
def space(redis_url: str) -> Iterator[Keyspace]:
    prefix = f"rt{uuid.uuid4().hex[:10]}:"
    client = redis.Redis.from_url(redis_url)
    spec = {
        "url": redis_url,
        "patterns": [prefix + "session:{user_id}:*", prefix + "cart:{user_id}"],
        "retention": [{"pattern": prefix + "session:*", "days": 30}],
        "scan_count": 50,
    }
    source = build("cache", spec, Settings())
    yield Keyspace(prefix, client, source)
    source.close()
    stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if stale:
        client.unlink(*stale)
    client.close()


def seed(space: Keyspace) -> None:
    """Users 1, 10 and 2: an idle session without TTL, an idle one with a TTL, a fresh one
    without TTL, a fresh one with a TTL; plus a cart (not under the policy's pattern)."""
    for user in ("1", "10", "2"):
        space.r.set(space.key(f"session:{user}:idle"), "a")
        space.r.set(space.key(f"session:{user}:idle-ttl"), "b", ex=90 * DAY)
        space.r.set(space.key(f"session:{user}:fresh"), "c")
        space.r.set(space.key(f"session:{user}:fresh-ttl"), "d", ex=600)
        space.r.set(space.key(f"cart:{user}"), "e")
        space.age(f"session:{user}:idle", 40)
        space.age(f"session:{user}:idle-ttl", 31)
        space.age(f"cart:{user}", 400)


def purge_all(
    space: Keyspace,
    cutoff: datetime,
    limits: Limits | None = None,
    held: Held | None = None,
    *,
    most: int = 200,
) -> list[PurgeResult]:
    """Call purge from {} until done, as the sweep does; every call's result."""
    cursor: Mapping[str, Any] = {}
    results = []
    for _ in range(most):
        result = space.source.purge(
            space.policy, cutoff, cursor, limits or Limits(), held or Held()
        )
        results.append(result)
        cursor = result.cursor
        if result.done:
            return results
    raise AssertionError("purge never finished")


def month_ago() -> datetime:
    return datetime.now(UTC) - timedelta(days=30)


def test_source_satisfies_the_retaining_protocol(space: Keyspace) -> None:
    assert isinstance(space.source, Retaining)


def test_policies_come_from_the_manifest_with_default_or_given_names(
    space: Keyspace, redis_url: str
) -> None:
    assert space.policy == Policy(
        name=f"cache.{space.prefix}session:*",
        source="cache",
        kind=PolicyKind.KEYS,
        days=30,
        location=f"{space.prefix}session:*",
        entry="sources.cache.retention[0]",
    )
    spec = {
        "url": redis_url,
        "patterns": ["cart:{user_id}"],
        "retention": {"pattern": "cart:*", "days": 7, "name": "carts"},
    }
    source = build("cache", spec, Settings())
    source.close()
    assert [(p.name, p.location, p.days) for p in source.retention_policies()] == [
        ("carts", "cart:*", 7)
    ]


def test_retention_as_text_stays_the_art15_statement(redis_url: str) -> None:
    spec = {"url": redis_url, "patterns": ["cart:{user_id}"], "retention": "30 days"}
    source = build("cache", spec, Settings())
    source.close()
    assert source.retention_policies() == ()
    assert source.locations[0].meta.retention == "30 days"


def test_purge_unlinks_idle_keys_and_gives_fresh_keys_without_ttl_one(space: Keyspace) -> None:
    seed(space)
    (result,) = purge_all(space, month_ago())
    assert (result.done, result.deleted, result.changed, result.held) == (True, 6, 3, 0)
    assert result.cursor == {"scan": 0}
    assert space.names() == {
        "session:1:fresh", "session:1:fresh-ttl", "session:10:fresh", "session:10:fresh-ttl",
        "session:2:fresh", "session:2:fresh-ttl", "cart:1", "cart:10", "cart:2",
    }  # fmt: skip
    assert 30 * DAY - 60 <= space.r.ttl(space.key("session:1:fresh")) <= 30 * DAY
    assert space.r.ttl(space.key("session:1:fresh-ttl")) <= 600  # its own TTL is kept
    assert space.r.ttl(space.key("cart:1")) == -1  # not under the policy's pattern


def test_a_cutoff_in_the_future_makes_every_key_due(space: Keyspace) -> None:
    seed(space)
    (result,) = purge_all(space, datetime.now(UTC) + timedelta(days=1))
    assert (result.deleted, result.changed) == (12, 0)
    assert space.names() == {"cart:1", "cart:10", "cart:2"}


def test_a_hold_on_the_whole_source_changes_nothing_and_counts_it_held(
    space: Keyspace,
) -> None:
    seed(space)
    before = {k: space.r.ttl(space.key(k)) for k in space.names()}
    whole = Held(whole=True, basis="litigation")
    plan = space.source.retention_plan(space.policy, month_ago(), whole)
    assert (plan.due, plan.held) == (0, 9)
    (result,) = purge_all(space, month_ago(), held=whole)
    assert (result.deleted, result.changed, result.held) == (0, 0, 9)
    assert {k: space.r.ttl(space.key(k)) for k in space.names()}.keys() == before.keys()
    assert space.r.ttl(space.key("session:1:fresh")) == -1


def test_held_subjects_keys_stay_untouched_and_are_counted(space: Keyspace) -> None:
    seed(space)
    (result,) = purge_all(space, month_ago(), held=Held(identities=ADA))
    assert (result.deleted, result.changed, result.held) == (4, 2, 3)
    assert {k for k in space.names() if k.startswith("session:1:")} == {
        "session:1:idle", "session:1:idle-ttl", "session:1:fresh", "session:1:fresh-ttl"
    }  # fmt: skip
    assert space.r.ttl(space.key("session:1:fresh")) == -1  # a TTL would end the hold
    assert not {"session:10:idle", "session:2:idle"} & space.names()  # 10 is not 1


def test_a_rerun_after_a_purge_is_a_no_op(space: Keyspace) -> None:
    seed(space)
    purge_all(space, month_ago())
    left = space.names()
    (again,) = purge_all(space, month_ago())
    assert (again.done, again.deleted, again.changed, again.held) == (True, 0, 0, 0)
    assert space.names() == left


def test_bounded_calls_resume_from_the_scan_cursor_and_finish(space: Keyspace) -> None:
    with space.r.pipeline() as pipe:
        for i in range(300):
            pipe.set(space.key(f"session:9:{i}"), "x")
        pipe.execute()
    for i in range(0, 300, 2):
        space.age(f"session:9:{i}", 45)
    results = purge_all(space, month_ago(), Limits(batch_size=20, max_items=25))
    assert len(results) > 3
    assert all(set(r.cursor) == {"scan"} for r in results)
    assert all(r.deleted + r.changed < 25 + 60 for r in results)  # a batch of overshoot at most
    assert (sum(r.deleted for r in results), sum(r.changed for r in results)) == (150, 150)
    assert len(space.names()) == 150
    assert all(space.r.ttl(space.key(f"session:9:{i}")) > 0 for i in range(1, 300, 2))


def test_purge_never_calls_keys(space: Keyspace) -> None:
    seed(space)

    def calls(name: str) -> int:
        stats = space.r.info("commandstats").get(f"cmdstat_{name}", {})
        return int(stats.get("calls", 0))

    keys_before, scan_before = calls("keys"), calls("scan")
    purge_all(space, month_ago())
    space.source.retention_status(space.policy, datetime.now(UTC), Held())
    assert calls("keys") == keys_before
    assert calls("scan") > scan_before


def test_plan_counts_match_what_purge_then_does(space: Keyspace) -> None:
    seed(space)
    held = Held(identities=ADA)
    cutoff = month_ago()
    plan = space.source.retention_plan(space.policy, cutoff, held)
    assert (plan.policy, plan.cutoff, plan.due, plan.held) == (space.policy.name, cutoff, 6, 3)
    assert plan.note == (
        "4 keys idle past the limit would be unlinked; 2 keys without a TTL would get one"
    )
    assert space.r.ttl(space.key("session:2:fresh")) == -1  # a plan writes nothing
    done = purge_all(space, cutoff, Limits(batch_size=2, max_items=2), held)
    assert sum(r.deleted + r.changed for r in done) == plan.due
    assert sum(r.held for r in done) == plan.held


def test_status_reports_the_oldest_and_overdue_before_and_none_after(space: Keyspace) -> None:
    seed(space)
    now = datetime.now(UTC)
    before = space.source.retention_status(space.policy, now, Held(identities=ADA))
    assert (before.policy, before.limit_days, before.overdue, before.held) == (
        space.policy.name,
        30,
        9,
        3,
    )  # fmt: skip  (3 idle x 40 days, 3 idle with TTL x 31 days, 3 fresh without TTL)
    assert before.oldest is not None
    assert abs(before.oldest - (now - timedelta(days=40))) < timedelta(minutes=1)
    purge_all(space, space.policy.cutoff(now))
    after = space.source.retention_status(space.policy, now, Held())
    assert (after.overdue, after.held) == (0, 0)
    assert after.oldest is not None and now - after.oldest < timedelta(minutes=1)


def test_status_of_a_pattern_with_no_keys_has_no_oldest(space: Keyspace) -> None:
    status = space.source.retention_status(space.policy, datetime.now(UTC), Held())
    assert (status.oldest, status.overdue, status.held) == (None, 0, 0)


def test_an_lfu_eviction_policy_is_refused_with_the_fix(space: Keyspace) -> None:
    seed(space)
    (previous,) = space.r.config_get("maxmemory-policy").values()
    space.r.config_set("maxmemory-policy", "allkeys-lfu")
    try:
        with pytest.raises(SourceRefusedError, match=r"LFU maxmemory-policy; set an LRU") as err:
            purge_all(space, month_ago())
    finally:
        space.r.config_set("maxmemory-policy", previous)
    assert str(err.value).startswith("sources.cache: ")
    assert "\n" not in str(err.value) and space.prefix not in str(err.value)
    assert len(space.names()) == 15  # nothing happened


def test_an_unreachable_server_is_a_retryable_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = {
        "url": f"redis://127.0.0.1:{port}/0",
        "patterns": ["session:{user_id}:*"],
        "retention": [{"pattern": "session:*", "days": 30}],
    }
    source = build("cache", spec, Settings())
    try:
        with pytest.raises(SourceUnavailableError, match=f"127.0.0.1:{port}"):
            source.purge(source.retention_policies()[0], month_ago(), {}, Limits(), Held())
    finally:
        source.close()


@pytest.mark.parametrize(
    ("idle", "ttl", "verdict"),
    [
        (100, -1, Verdict.UNLINK),
        (100, 5000, Verdict.UNLINK),
        (10, -1, Verdict.EXPIRE),
        (10, 5000, Verdict.KEEP),
        (50, -1, Verdict.EXPIRE),  # exactly at the threshold: not past it
        (None, -1, Verdict.KEEP),  # gone between SCAN and the read
        (100, -2, Verdict.KEEP),
    ],
)
def test_decide_unlinks_past_the_threshold_else_gives_a_ttl_to_keys_without_one(
    idle: int | None, ttl: int, verdict: Verdict
) -> None:
    assert decide(idle, ttl, threshold=50) is verdict


@pytest.mark.parametrize(
    "pattern",
    ["session:*", "session:1:*", "session:\\*:*", "s?ssion:[12]:*", "session:[^1]:*",
     "session:[0-9]:x", "session:[a-]*", "*x", "session:1:x", "[]x", "\\"],
)  # fmt: skip
def test_held_key_matching_agrees_with_redis_match(space: Keyspace, pattern: str) -> None:
    rests = ["session:1:x", "session:10:x", "session:2:y", "session:*:x", "sEssion:1:x",
             "session:a:x", "session:-:z", "session:1:x\nx", "x", "\\"]  # fmt: skip
    for rest in rests:
        space.r.set(space.key(rest), "v")
    full = space.prefix + pattern
    by_redis = set(space.r.scan_iter(match=full, count=1000))
    everything = set(space.r.scan_iter(match=f"{space.prefix}*", count=1000))
    assert {k for k in everything if glob_regex(full).fullmatch(k)} == by_redis


@pytest.mark.parametrize(
    ("retention", "message"),
    [
        (
            [{"pattern": "a:*", "days": 7}, {"pattern": "session:{user_id}:*", "days": 7}],
            r"^sources\.cache\.retention\[1\]: the pattern must be literal",
        ),
        ([{"pattern": "a:*", "days": 0}], r"^sources\.cache\.retention\[0\]\.days must be"),
        ([{"pattern": "a:*", "days": "30"}], r"^sources\.cache\.retention\[0\]\.days must be"),
        ([{"pattern": "a:*"}], r"^sources\.cache\.retention\[0\]\.days is missing"),
        (
            [{"pattern": "a:*", "days": 7, "ttl": 3}],
            r"^sources\.cache\.retention\[0\]\.ttl is not a known setting",
        ),
        ([{"pattern": "", "days": 7}], r"^sources\.cache\.retention\[0\]\.pattern is missing"),
        ([{"pattern": "a:*", "days": 7, "name": ""}], r"retention\[0\]\.name must be a non-empty"),
        (
            [{"pattern": "a:*", "days": 7}, {"pattern": "a:*", "days": 9}],
            r"^sources\.cache\.retention\[1\]: the name is used twice",
        ),
    ],
)
def test_manifest_mistakes_are_one_line_errors_naming_the_entry(
    retention: Any, message: str
) -> None:
    spec = {"url": "redis://127.0.0.1:6379/9", "patterns": ["session:{user_id}:*"]}
    with pytest.raises(ManifestError, match=message) as caught:
        build("cache", {**spec, "retention": retention}, Settings())
    assert "\n" not in str(caught.value)
