"""Retention for the redis connector: keys of a literal pattern idle past N days.

``retention = [{ pattern = "session:*", days = 30 }]`` (optional ``name``; a single table
works too; a string stays the Art. 15 text). Keys are found with SCAN MATCH <pattern>
COUNT <batch_size>, never KEYS. Per batch one pipeline reads OBJECT IDLETIME and TTL and
one more acts: a key idle longer than the limit is unlinked; any other key without a TTL
gets one of `days` (it expires unless it is used); keys with a TTL are left alone. Idle
times are the server's, so the cutoff is compared with the server's clock (TIME): a key
is due when idle longer than TIME - cutoff, which is days x 86400 s for now - days.

Idle times need an LRU (or no-eviction) maxmemory-policy: under an LFU policy Redis does
not track them, and every method refuses with a `SourceRefusedError` that says so.

Legal holds: a hold on the whole source keeps every key; held identities expand the
source's own templated patterns (as erasure does), and keys they match are kept; kept
keys are counted as held, never unlinked or given a TTL.

The cursor is ``{"scan": <SCAN cursor>}``, a position that holds no personal data; a call
is done when SCAN returns 0, and stops early (after a whole batch) at `max_items` keys
unlinked or changed, or at `max_seconds`. A key used between the two pipelines of its
batch may still go: retention is decided by the day, not the millisecond. Counts are
SCAN's: during a rehash SCAN can return a key twice, and a plan or status then counts it
twice (purge never acts twice: the key is gone or has a TTL). `retention_status`
approximates the oldest key's age as the longest idle time among the matching keys.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import redis

from compliance.errors import SourceRefusedError
from compliance.identities import Identities
from compliance.retention.policy import Held, Limits, Policy, PolicyPlan, PurgeResult, Status
from compliance.sources.objectstore_retention import aware

if TYPE_CHECKING:
    from compliance.sources.redisvalues import Client


class Keyspace(Protocol):
    """What retention needs of a redis source (`rediskeys.RedisKeysSource`)."""

    name: str
    client: Client

    def scan_once(
        self, cursor: int, match: str, count: int | None = None
    ) -> tuple[int, list[bytes]]: ...

    def errors(self, operation: str) -> AbstractContextManager[None]: ...

    def targets(self, identities: Identities) -> Sequence[Any]: ...


DAY = 86_400


class Verdict(StrEnum):
    KEEP = "keep"
    UNLINK = "unlink"
    EXPIRE = "expire"


def decide(idle: int | None, ttl: int | None, threshold: float) -> Verdict:
    """One key: idle longer than `threshold` seconds -> unlink; else no TTL (-1) -> expire;
    else keep. A key gone meanwhile (idle None, TTL -2) is kept: there is nothing to do."""
    if idle is None or ttl is None or ttl == -2:
        return Verdict.KEEP
    if idle > threshold:
        return Verdict.UNLINK
    return Verdict.EXPIRE if ttl == -1 else Verdict.KEEP


def glob_regex(pattern: str) -> re.Pattern[bytes]:
    """The Redis MATCH `pattern` (``* ? [a-z] [^x] \\*``) as a regex over raw keys."""
    src, out, i = pattern.encode(), [], 0
    while i < len(src):
        char = src[i : i + 1]
        if char == b"\\" and i + 1 < len(src):
            out.append(re.escape(src[i + 1 : i + 2]))
            i += 2
        elif char == b"[":
            members, i = _char_class(src, i + 1)
            out.append(members)
        else:
            out.append({b"*": b".*", b"?": b"."}.get(char, re.escape(char)))
            i += 1
    return re.compile(b"".join(out), re.DOTALL)


def _char_class(src: bytes, i: int) -> tuple[bytes, int]:
    """A ``[...]`` from just after its ``[``: the regex, and the index after the ``]``."""
    negate = src[i : i + 1] == b"^"
    i += negate
    members = []
    while i < len(src) and src[i : i + 1] != b"]":
        if src[i : i + 1] == b"\\" and i + 1 < len(src):
            i += 1
        elif src[i + 1 : i + 2] == b"-" and i + 2 < len(src):
            low, high = sorted((src[i : i + 1], src[i + 2 : i + 3]))
            members.append(re.escape(low) + b"-" + re.escape(high))
            i += 3
            continue
        members.append(re.escape(src[i : i + 1]))
        i += 1
    if not members:
        return (b"." if negate else b"(?!)"), i + 1
    return b"[" + (b"^" if negate else b"") + b"".join(members) + b"]", i + 1


@dataclass(frozen=True)
class Seen:
    """One key as a batch read it. Holds a key: never logged."""

    key: bytes
    idle: int
    verdict: Verdict


@dataclass(frozen=True)
class Outcome:
    """What one batch did."""

    deleted: int = 0
    changed: int = 0
    held: int = 0


class KeyRetention:
    """The `Retaining` work of one redis source, over its client."""

    def __init__(self, source: Keyspace) -> None:
        self.source = source

    def plan(self, policy: Policy, cutoff: datetime, held: Held) -> PolicyPlan:
        counts, _ = self.census(policy, cutoff, held)
        unlink, expire = counts[Verdict.UNLINK], counts[Verdict.EXPIRE]
        note = (
            f"{unlink} keys idle past the limit would be unlinked; "
            f"{expire} keys without a TTL would get one"
        )
        return PolicyPlan(policy.name, cutoff, unlink + expire, counts["held"], (), note)

    def status(self, policy: Policy, now: datetime, held: Held) -> Status:
        counts, max_idle = self.census(policy, policy.cutoff(now), held)
        oldest = None if max_idle is None else aware(now) - timedelta(seconds=max_idle)
        overdue = counts[Verdict.UNLINK] + counts[Verdict.EXPIRE] + counts["held"]
        return Status(policy.name, policy.days, oldest, overdue, counts["held"])

    def census(
        self, policy: Policy, cutoff: datetime, held: Held
    ) -> tuple[dict[str, int], int | None]:
        """Due keys by verdict (held ones apart) and the longest idle time; writes nothing."""
        threshold, is_held = self.threshold(cutoff), self.holder(held)
        counts = {Verdict.UNLINK.value: 0, Verdict.EXPIRE.value: 0, "held": 0}
        max_idle: int | None = None
        for batch in self._scan_all(policy.location):
            for seen in self.read(batch, threshold):
                max_idle = seen.idle if max_idle is None else max(max_idle, seen.idle)
                if seen.verdict is not Verdict.KEEP:
                    counts["held" if is_held(seen.key) else seen.verdict.value] += 1
        return counts, max_idle

    def purge(
        self,
        policy: Policy,
        cutoff: datetime,
        cursor: Mapping[str, Any],
        limits: Limits,
        held: Held,
    ) -> PurgeResult:
        """Unlink idle keys and give the others a TTL, one SCAN batch at a time."""
        threshold, is_held = self.threshold(cutoff), self.holder(held)
        run = _Run(limits)
        scan = int(cursor.get("scan", 0))
        while True:
            started = time.monotonic()
            scan, keys = self.source.scan_once(scan, policy.location, max(1, limits.batch_size))
            if keys:
                run.add(self.act(self.read(keys, threshold), is_held, policy.days * DAY), started)
            if scan == 0:
                return run.result(True, scan)
            if run.should_stop():
                return run.result(False, scan)
            if keys and limits.pause_seconds:
                time.sleep(limits.pause_seconds)

    def read(self, keys: Sequence[bytes], threshold: float) -> list[Seen]:
        """Idle time and TTL of each key in one pipeline, and what to do with it."""
        if not keys:
            return []
        with (
            self.source.errors("read key idle times"),
            self._lfu_refused(),
            self.source.client.pipeline(transaction=False) as pipe,
        ):
            for key in keys:
                pipe.object("idletime", key)
                pipe.ttl(key)
            replies = pipe.execute()
        pairs = zip(replies[::2], replies[1::2], strict=True)
        return [
            Seen(key, int(idle), decide(idle, ttl, threshold))
            for key, (idle, ttl) in zip(keys, pairs, strict=True)
            if idle is not None
        ]

    def act(self, seen: list[Seen], is_held: Callable[[bytes], bool], ttl: int) -> Outcome:
        """Unlink and expire what the batch decided, except held keys, in one pipeline."""
        due = [s for s in seen if s.verdict is not Verdict.KEEP]
        free = [s for s in due if not is_held(s.key)]
        doomed = [s.key for s in free if s.verdict is Verdict.UNLINK]
        expiring = [s.key for s in free if s.verdict is Verdict.EXPIRE]
        if not free:
            return Outcome(held=len(due))
        with (
            self.source.errors("unlink or expire keys"),
            self.source.client.pipeline(transaction=False) as pipe,
        ):
            if doomed:
                pipe.unlink(*doomed)
            for key in expiring:
                pipe.expire(key, ttl)
            replies = pipe.execute()
        deleted = int(replies[0]) if doomed else 0
        changed = sum(1 for reply in replies[1 if doomed else 0 :] if reply)
        return Outcome(deleted, changed, len(due) - len(free))

    def threshold(self, cutoff: datetime) -> float:
        """Seconds of idleness beyond which a key is past `cutoff`, by the server's clock."""
        with self.source.errors("read the server time"):
            seconds, micros = self.source.client.time()
        return int(seconds) + int(micros) / 1_000_000 - aware(cutoff).timestamp()

    def holder(self, held: Held) -> Callable[[bytes], bool]:
        """Whether a key is kept by a legal hold."""
        if held.whole:
            return lambda key: True
        exact: set[bytes] = set()
        patterns: list[re.Pattern[bytes]] = []
        for target in self.source.targets(held.identities) if held.identities else []:
            if target.is_pattern:
                patterns.append(glob_regex(target.match))
            else:
                exact.add(target.match.encode())
        return lambda key: key in exact or any(p.fullmatch(key) for p in patterns)

    def _scan_all(self, match: str) -> Iterator[list[bytes]]:
        scan = 0
        while True:
            scan, keys = self.source.scan_once(scan, match)
            yield keys
            if scan == 0:
                return

    @contextmanager
    def _lfu_refused(self) -> Iterator[None]:
        try:
            yield
        except redis.ResponseError as exc:
            if "LFU" not in str(exc):
                raise
            raise SourceRefusedError(
                f"sources.{self.source.name}: Redis does not track idle times under an LFU "
                "maxmemory-policy; set an LRU or noeviction policy, or drop this retention"
            ) from exc


class _Run:
    """The counters and limits of one `purge` call."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.started = time.monotonic()
        self.deleted = self.changed = self.held = 0
        self.batch_ms: list[float] = []

    def add(self, outcome: Outcome, started: float) -> None:
        self.deleted += outcome.deleted
        self.changed += outcome.changed
        self.held += outcome.held
        self.batch_ms.append((time.monotonic() - started) * 1000)

    def should_stop(self) -> bool:
        items = self.limits.max_items
        if items is not None and self.deleted + self.changed >= items:
            return True
        seconds = self.limits.max_seconds
        return seconds is not None and time.monotonic() - self.started >= seconds

    def result(self, done: bool, scan: int) -> PurgeResult:
        return PurgeResult(
            done,
            {"scan": scan},
            deleted=self.deleted,
            held=self.held,
            changed=self.changed,
            batches=len(self.batch_ms),
            batch_ms=tuple(self.batch_ms),
        )
