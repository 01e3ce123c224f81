"""Retention for the objectstore connector: objects under a literal prefix past N days.

``retention = [{ prefix = "uploads/tmp/", days = 7 }]`` (optional ``name``; a single
table works too; a string stays the Art. 15 text). Every object whose LastModified is
before the cutoff goes: in a versioned bucket every old version and delete marker, so
nothing can be restored; `DeleteObjects` batches hold at most 1000 identifiers.

Legal holds: a hold on the whole source keeps everything; held identities expand the
source's own templated `prefixes` (``avatars/{user_id}/``), as erasure does, and objects
under those prefixes stay. Kept items are counted, never deleted.

The cursor holds counters only, never a key (keys hold identities). Each call lists
again from the start of the prefix: what earlier calls deleted has vanished from the
listing, what they kept (fresh or held) is passed again, and ``kept`` says how many of
those earlier calls counted, so a held object is counted once per run. A call that
stops at `max_items` or `max_seconds` returns ``done=False``; each call gets past at
least one item more than the one before, so a run always ends.

`parse_retention` reads the manifest key for both this connector and `redis`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from compliance.errors import ManifestError
from compliance.identities import Identities
from compliance.retention.policy import (
    Held,
    Limits,
    Policy,
    PolicyKind,
    PolicyPlan,
    PurgeResult,
    Status,
)
from compliance.sources.objectstore_s3 import MAX_DELETE, Bucket, ObjectId, Stored
from compliance.sources.templating import check_keys

Expand = Callable[[Identities], list[str]]  # held identities -> the prefixes they own


# --- the manifest -----------------------------------------------------------------------


def parse_retention(
    spec: Mapping[str, Any], source: str, kind: PolicyKind, item_key: str, example: str
) -> tuple[Policy, ...]:
    """The policies of ``retention`` (a table or an array of tables); () for Art. 15 text.
    `item_key` is "prefix" or "pattern"; `example` its value in error messages."""
    raw = spec.get("retention")
    if raw is None or isinstance(raw, str):
        return ()
    where = f"sources.{source}.retention"
    items = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(items, list):
        raise ManifestError(
            f"{where} must be text (Art. 15) or a table like "
            f"{{ {item_key} = {example}, days = 30 }}"
        )
    parse = _Entry(source, kind, item_key, example)
    policies = tuple(parse(item, f"{where}[{i}]") for i, item in enumerate(items))
    seen: set[str] = set()
    for policy in policies:
        if policy.name in seen:
            raise ManifestError(f"{policy.entry}: the name is used twice; give each its own")
        seen.add(policy.name)
    return policies


def art15_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """`spec` for the Art. 15 reader: ``retention`` only when it is text."""
    if isinstance(spec.get("retention", ""), str):
        return spec
    return {k: v for k, v in spec.items() if k != "retention"}


@dataclass(frozen=True)
class _Entry:
    source: str
    kind: PolicyKind
    item_key: str
    example: str

    def __call__(self, item: Any, here: str) -> Policy:
        if not isinstance(item, Mapping):
            raise ManifestError(f"{here} must be a table like {self._table()}")
        check_keys(item, {self.item_key, "days", "name"}, here)
        location = item.get(self.item_key)
        if not isinstance(location, str) or not location:
            raise ManifestError(f"{here}.{self.item_key} is missing or empty; e.g. {self._table()}")
        if "{" in location or "}" in location:
            raise ManifestError(
                f"{here}: the {self.item_key} must be literal, without {{...}} placeholders: "
                "retention covers everything under it (legal holds protect subjects)"
            )
        name = item.get("name", f"{self.source}.{location}")
        if not isinstance(name, str) or not name.strip():
            raise ManifestError(f"{here}.name must be a non-empty string")
        return Policy(
            name=name.strip(),
            source=self.source,
            kind=self.kind,
            days=_days(item, here),
            location=location,
            entry=here,
        )

    def _table(self) -> str:
        return f"{{ {self.item_key} = {self.example}, days = 30 }}"


def _days(item: Mapping[str, Any], here: str) -> int:
    if "days" not in item:
        raise ManifestError(f"{here}.days is missing; set how long to keep it, e.g. days = 30")
    days = item["days"]
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ManifestError(f"{here}.days must be a whole number of days, at least 1")
    return days


def aware(moment: datetime) -> datetime:
    """`moment` with a time zone (a naive one is taken as UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- the policy at work -------------------------------------------------------------------


@dataclass(frozen=True)
class Census:
    """Counts under a prefix: due (not held) and held past a cutoff, the oldest item."""

    due: int
    held: int
    oldest: datetime | None


class ObjectRetention:
    """The `Retaining` work of one objectstore source, over its bucket."""

    def __init__(self, bucket: Bucket, expand: Expand) -> None:
        self.bucket = bucket
        self.expand = expand

    def plan(self, policy: Policy, cutoff: datetime, held: Held) -> PolicyPlan:
        census = self.census(policy, cutoff, held)
        note = "every old version and delete marker counts" if self.bucket.is_versioned() else ""
        return PolicyPlan(policy.name, cutoff, census.due, census.held, (), note)

    def status(self, policy: Policy, now: datetime, held: Held) -> Status:
        census = self.census(policy, policy.cutoff(now), held)
        overdue = census.due + census.held
        return Status(policy.name, policy.days, census.oldest, overdue, census.held)

    def census(self, policy: Policy, cutoff: datetime, held: Held) -> Census:
        """One listing of the prefix; writes nothing."""
        cutoff, is_held = aware(cutoff), self.holder(held)
        due = kept = 0
        oldest: datetime | None = None
        for item in self.bucket.stored(policy.location):
            oldest = item.modified if oldest is None else min(oldest, item.modified)
            if item.modified >= cutoff:
                continue
            if is_held(item.key):
                kept += 1
            else:
                due += 1
        return Census(due, kept, oldest)

    def purge(
        self,
        policy: Policy,
        cutoff: datetime,
        cursor: Mapping[str, Any],
        limits: Limits,
        held: Held,
    ) -> PurgeResult:
        """Delete what is past `cutoff` and not held, within `limits` (see the module doc)."""
        run = _Purge(self.bucket, limits, int(cursor.get("kept", 0)))
        cutoff, is_held = aware(cutoff), self.holder(held)
        for item in self.bucket.stored(policy.location):
            if run.should_stop():
                return run.result(done=False)
            run.take(item, item.modified < cutoff, is_held(item.key))
        return run.result(done=True)

    def holder(self, held: Held) -> Callable[[str], bool]:
        """Whether a key is kept by a legal hold."""
        if held.whole:
            return lambda key: True
        prefixes = tuple(self.expand(held.identities)) if held.identities else ()
        return lambda key: key.startswith(prefixes)


class _Purge:
    """The state of one `purge` call: pending deletions, counters and limits."""

    def __init__(self, bucket: Bucket, limits: Limits, skip: int) -> None:
        self.bucket, self.limits, self.skip = bucket, limits, skip
        self.cap = max(1, min(limits.batch_size, MAX_DELETE))
        self.started = time.monotonic()
        self.pending: list[ObjectId] = []
        self.batch_ms: list[float] = []
        self.deleted = self.held = self.kept = 0

    def take(self, item: Stored, due: bool, held: bool) -> None:
        if due and not held:
            self.pending.append(item.id)
            if len(self.pending) >= self.cap:
                self.flush()
            return
        self.kept += 1
        if due and self.kept > self.skip:  # earlier calls counted the first `skip` kept
            self.held += 1

    def should_stop(self) -> bool:
        """At `max_items` deletions; at `max_seconds` once this call did something new."""
        done = self.deleted + len(self.pending)
        if self.limits.max_items is not None and done >= max(1, self.limits.max_items):
            return True
        if self.limits.max_seconds is None or (done == 0 and self.kept <= self.skip):
            return False
        return time.monotonic() - self.started >= self.limits.max_seconds

    def flush(self) -> None:
        if not self.pending:
            return
        if self.batch_ms and self.limits.pause_seconds:
            time.sleep(self.limits.pause_seconds)
        started = time.monotonic()
        self.bucket.delete(self.pending)
        self.batch_ms.append((time.monotonic() - started) * 1000)
        self.deleted += len(self.pending)
        self.pending = []

    def result(self, *, done: bool) -> PurgeResult:
        self.flush()
        cursor = {} if done else {"kept": max(self.kept, self.skip)}
        return PurgeResult(
            done,
            cursor,
            deleted=self.deleted,
            held=self.held,
            batches=len(self.batch_ms),
            batch_ms=tuple(self.batch_ms),
        )
