"""Redis keys: the subject's keys under templated patterns (``session:{user_id}:*``).

A pattern with a glob character is found with SCAN ... MATCH (never KEYS, which blocks
the server); a pattern without one is a single key, looked up directly. Identity values
are glob-escaped, so a user id ``*`` matches only the literal ``*``. Keys are removed
with UNLINK (freed in the background). The erase checkpoint holds the pattern index,
the SCAN cursor and the server's run id: after a restart the cursor starts again at 0,
as an old cursor could skip keys on a new server.

Retention (``retention = [{ pattern = "session:*", days = 30 }]``) unlinks keys idle past
their limit and gives keys without a TTL one: see `redis_retention`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from compliance.config import Settings
from compliance.errors import ManifestError, SourceRefusedError, SourceUnavailableError
from compliance.identities import Identities
from compliance.retention.policy import Held, Limits, Policy, PolicyKind, PolicyPlan, PurgeResult
from compliance.retention.policy import Status as RetentionStatus
from compliance.sources.base import (
    Action,
    Art15,
    Disposition,
    EraseResult,
    LocationPlan,
    Residue,
    RowsItem,
    SourcePlan,
)
from compliance.sources.objectstore_retention import art15_spec, parse_retention
from compliance.sources.redis_retention import KeyRetention
from compliance.sources.redisvalues import Client, read_key
from compliance.sources.templating import (
    ART15_KEYS,
    Location,
    art15,
    check_keys,
    escape_glob,
    facts_by_template,
    is_glob,
    manifest_factory,
    optional_number,
    parse_locations,
    require_str,
)

KIND = "redis"
SCANS_PER_CHUNK = 200  # bounds one erase chunk on a big keyspace with few matches
_KEYS = {"url", "patterns", "scan_count", "socket_timeout", "connect_timeout"} | ART15_KEYS


@dataclass(frozen=True)
class Target:
    """One expanded pattern (or exact key) of a location. Holds personal data."""

    location: Location
    match: str
    is_pattern: bool


def build(name: str, spec: Mapping[str, Any], settings: Settings) -> RedisKeysSource:
    """The `redis` factory: validate `spec` (one `[sources.<name>]` table)."""
    where = f"sources.{name}"
    check_keys(spec, _KEYS, where)
    url = require_str(spec, "url", where, '"redis://127.0.0.1:6379/0"')
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ManifestError(f"{where}.url must start with redis://, rediss:// or unix://")
    policies = parse_retention(spec, name, PolicyKind.KEYS, "pattern", '"session:*"')
    meta = art15(art15_spec(spec), where)
    locations = parse_locations(spec, "patterns", "pattern", where, meta)
    for i, loc in enumerate(locations):
        if any(part[:1] in ("*", "?", "[") for part in loc.template.literal_parts()[1:]):
            raise ManifestError(
                f"{where}.patterns[{i}]: put a separator after each field, e.g. "
                "'session:{user_id}:*', so user 1 cannot match user 10's keys"
            )
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=optional_number(spec, "socket_timeout", where, 10, minimum=0.1),
            socket_connect_timeout=optional_number(spec, "connect_timeout", where, 5, minimum=0.1),
        )
    except ValueError as exc:  # the message could echo a password: do not pass it on
        raise ManifestError(f"{where}.url is not a valid Redis URL; fix it") from exc
    scan_count = int(optional_number(spec, "scan_count", where, 1000, minimum=1))
    return RedisKeysSource(name, locations, client, scan_count, policies)


from_manifest = manifest_factory(build)


class RedisKeysSource:
    """A `DataSource` over templated key patterns of one Redis database; `Retaining` over
    literal ones."""

    kind = KIND

    def __init__(
        self,
        name: str,
        locations: tuple[Location, ...],
        client: Any,
        scan_count: int = 1000,
        policies: tuple[Policy, ...] = (),
    ) -> None:
        self.name = name
        self.locations = locations
        self.client: Client = client
        self.scan_count = scan_count
        self.policies = policies
        self.retention = KeyRetention(self)

    def identity_types(self) -> frozenset[str]:
        """The identity types named in the key patterns."""
        return frozenset(f for loc in self.locations for f in loc.template.fields)

    def resolve(self, identities: Identities) -> Identities:
        return identities

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        erase = action in (Action.ERASE, Action.VERIFY)
        disposition = Disposition.DELETE if erase else Disposition.EXPORT
        counts = self._counts(identities)
        plans = tuple(
            LocationPlan(loc.template.text, disposition, counts[i])
            for i, loc in enumerate(self.locations)
        )
        return SourcePlan(self.name, KIND, plans)

    def export(self, identities: Identities) -> Iterator[RowsItem]:
        """One collection per pattern; rows are {key, type, value, ttl}."""
        targets = self.targets(identities)
        for loc in self.locations:
            mine = [t for t in targets if t.location is loc]
            if mine:
                yield RowsItem(self.name, loc.template.text, self._rows(mine), loc.meta)

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        targets = self.targets(identities)
        index, cursor = int(checkpoint.get("next", 0)), int(checkpoint.get("cursor", 0))
        run_id = self._run_id()
        if checkpoint.get("run_id", run_id) != run_id:
            cursor = 0  # another server (restart, failover): its cursors mean nothing here
        deleted, scans = 0, 0
        while index < len(targets) and deleted < batch_size and scans < SCANS_PER_CHUNK:
            target = targets[index]
            if target.is_pattern:
                cursor, keys = self.scan_once(cursor, target.match)
                scans += 1
            else:
                cursor, keys = 0, [target.match.encode()]
            deleted += self._unlink(keys)
            if cursor == 0:
                index += 1
        state = {"next": index, "cursor": cursor, "run_id": run_id}
        return EraseResult(index >= len(targets), state, deleted=deleted)

    def verify(self, identities: Identities) -> list[Residue]:
        counts = self._counts(identities)
        return [
            Residue(f"{self.name}:{loc.template.text}", counts[i])
            for i, loc in enumerate(self.locations)
            if counts[i]
        ]

    # --- retention (compliance.retention.policy.Retaining; see redis_retention) ----------

    def retention_policies(self) -> tuple[Policy, ...]:
        return self.policies

    def retention_plan(self, policy: Policy, cutoff: datetime, held: Held) -> PolicyPlan:
        """Keys that would be unlinked or given a TTL; writes nothing."""
        return self.retention.plan(policy, cutoff, held)

    def purge(
        self,
        policy: Policy,
        cutoff: datetime,
        cursor: Mapping[str, Any],
        limits: Limits,
        held: Held,
    ) -> PurgeResult:
        """Unlink keys idle past `cutoff`, give the others without a TTL one; cursor
        {"scan": <SCAN cursor>}."""
        return self.retention.purge(policy, cutoff, cursor, limits, held)

    def retention_status(self, policy: Policy, now: datetime, held: Held) -> RetentionStatus:
        """The oldest key (now - the longest idle time: an approximation) and how many
        keys are idle past the limit or have no TTL."""
        return self.retention.status(policy, now, held)

    def location_facts(self) -> Mapping[str, Art15]:
        """Per key pattern, the Art. 15 facts the manifest declares (`Describing`)."""
        return facts_by_template(self.locations)

    def close(self) -> None:
        self.client.close()

    # --- keys -----------------------------------------------------------------------------

    def targets(self, identities: Identities) -> list[Target]:
        out = []
        for loc in self.locations:
            if any(is_glob(part) for part in loc.template.literal_parts()):
                out += [Target(loc, p, True) for p in loc.template.expand(identities, escape_glob)]
            else:
                out += [Target(loc, k, False) for k in loc.template.expand(identities, str)]
        return out

    def _keys(self, target: Target) -> Iterator[bytes]:
        if not target.is_pattern:
            with self.errors("look up a key"):
                found = self.client.exists(target.match)
            if found:
                yield target.match.encode()
            return
        cursor = 0
        while True:
            cursor, keys = self.scan_once(cursor, target.match)
            yield from keys
            if cursor == 0:
                return

    def _counts(self, identities: Identities) -> list[int]:
        counts = [0] * len(self.locations)
        for target in self.targets(identities):
            seen = set(self._keys(target))  # SCAN may return a key twice
            counts[self.locations.index(target.location)] += len(seen)
        return counts

    def _rows(self, targets: list[Target]) -> Iterator[dict[str, Any]]:
        seen: set[bytes] = set()
        for target in targets:
            for key in self._keys(target):
                if key in seen:
                    continue
                seen.add(key)
                with self.errors("read a key"):
                    row = read_key(self.client, key)
                if row is not None:
                    yield row

    def scan_once(
        self, cursor: int, match: str, count: int | None = None
    ) -> tuple[int, list[bytes]]:
        with self.errors("scan keys"):
            cursor, keys = self.client.scan(cursor, match=match, count=count or self.scan_count)
        return int(cursor), list(keys)

    def _unlink(self, keys: Sequence[bytes | str]) -> int:
        if not keys:
            return 0
        with self.errors("unlink keys"):
            return int(self.client.unlink(*keys))

    def _run_id(self) -> str:
        with self.errors("read server info"):
            return str(self.client.info("server").get("run_id", ""))

    @contextmanager
    def errors(self, operation: str) -> Iterator[None]:
        """Translate redis-py errors; messages name the server, never a key or password."""
        kwargs = self.client.connection_pool.connection_kwargs
        server = f"redis {kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        where = f"sources.{self.name}: cannot {operation} at {server}"
        try:
            yield
        except redis.AuthenticationError as exc:
            raise SourceRefusedError(f"{where}: authentication failed; fix the url") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise SourceUnavailableError(f"{where}: {type(exc).__name__}; retry later") from exc
        except redis.ResponseError as exc:
            if str(exc).startswith("NOPERM"):
                raise SourceRefusedError(f"{where}: the user lacks permission; fix ACLs") from exc
            raise SourceUnavailableError(f"{where}: {type(exc).__name__}; retry later") from exc
        except redis.RedisError as exc:
            raise SourceUnavailableError(f"{where}: {type(exc).__name__}; retry later") from exc
