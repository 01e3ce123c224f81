"""Object storage (any S3-compatible endpoint): the subject's objects under templated prefixes.

``prefixes = ["avatars/{user_id}/"]``: each prefix is listed with pagination, exported
one streamed file per object, and erased in `DeleteObjects` batches of at most 1000 keys.
In a versioned bucket erasure removes every version and delete marker, so nothing can be
restored. The erase checkpoint is the index of the prefix being worked on (no key: keys
hold identities); deleted keys vanish from the listing, so each chunk lists again from
the start of its prefix, and a re-run after completion finds nothing to do.

Retention (``retention = [{ prefix = "uploads/tmp/", days = 7 }]``) deletes every version
under a literal prefix past its age, keeping what legal holds cover: see
`objectstore_retention`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from compliance.config import Settings
from compliance.errors import ManifestError
from compliance.identities import Identities
from compliance.retention.policy import Held, Limits, Policy, PolicyKind, PolicyPlan, PurgeResult
from compliance.retention.policy import Status as RetentionStatus
from compliance.sources.base import (
    Action,
    Art15,
    Disposition,
    EraseResult,
    FileItem,
    LocationPlan,
    Residue,
    SourcePlan,
)
from compliance.sources.objectstore_retention import ObjectRetention, art15_spec, parse_retention
from compliance.sources.objectstore_s3 import MAX_DELETE, Bucket, ObjectStoreConfig, make_client
from compliance.sources.templating import (
    ART15_KEYS,
    Location,
    art15,
    check_keys,
    escape_s3_segment,
    facts_by_template,
    manifest_factory,
    optional_number,
    parse_locations,
    require_str,
)

KIND = "objectstore"
_KEYS = {
    "bucket",
    "endpoint_url",
    "region",
    "prefixes",
    "versioned",
    "connect_timeout",
    "read_timeout",
    "max_attempts",
} | ART15_KEYS


@dataclass(frozen=True)
class PrefixUsage:
    """How much the subject holds under one prefix template (current versions)."""

    location: str
    objects: int
    bytes: int


def build(name: str, spec: Mapping[str, Any], settings: Settings) -> ObjectStoreSource:
    """The `objectstore` factory: validate `spec` (one `[sources.<name>]` table)."""
    where = f"sources.{name}"
    check_keys(spec, _KEYS, where)
    endpoint = spec.get("endpoint_url", settings.s3_endpoint_url)
    if not isinstance(endpoint, str) or (
        endpoint and not endpoint.startswith(("http://", "https://"))
    ):
        raise ManifestError(f"{where}.endpoint_url must be an http(s):// URL, or left out for AWS")
    versioned = spec.get("versioned")
    if versioned is not None and not isinstance(versioned, bool):
        raise ManifestError(f"{where}.versioned must be true or false (or left out to detect)")
    config = ObjectStoreConfig(
        bucket=require_str(spec, "bucket", where, '"app-avatars"'),
        endpoint_url=endpoint,
        region=str(spec.get("region", settings.s3_region)),
        versioned=versioned,
        connect_timeout=optional_number(spec, "connect_timeout", where, 5, minimum=0.1),
        read_timeout=optional_number(spec, "read_timeout", where, 30, minimum=0.1),
        max_attempts=int(optional_number(spec, "max_attempts", where, 3, minimum=1)),
    )
    policies = parse_retention(spec, name, PolicyKind.OBJECTS, "prefix", '"uploads/tmp/"')
    locations = parse_locations(spec, "prefixes", "prefix", where, art15(art15_spec(spec), where))
    for i, loc in enumerate(locations):
        if any(not part.startswith("/") for part in loc.template.literal_parts()[1:]):
            raise ManifestError(
                f"{where}.prefixes[{i}]: put a '/' right after each field, e.g. "
                "'avatars/{user_id}/', so user 1 cannot match user 10's objects"
            )
    return ObjectStoreSource(name, config, locations, make_client(config), policies)


from_manifest = manifest_factory(build)


class ObjectStoreSource:
    """A `DataSource` over templated prefixes of one bucket; `Retaining` over literal ones."""

    kind = KIND

    def __init__(
        self,
        name: str,
        config: ObjectStoreConfig,
        locations: tuple[Location, ...],
        client: Any,
        policies: tuple[Policy, ...] = (),
    ) -> None:
        self.name = name
        self.config = config
        self.locations = locations
        self.policies = policies
        self.bucket = Bucket(name, config, client)
        self.retention = ObjectRetention(self.bucket, self.prefixes)

    def identity_types(self) -> frozenset[str]:
        """The identity types named in the prefix templates."""
        return frozenset(f for loc in self.locations for f in loc.template.fields)

    def resolve(self, identities: Identities) -> Identities:
        return identities

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        """Objects to export, or (for erase) every version and delete marker to remove."""
        erase = action in (Action.ERASE, Action.VERIFY)
        disposition = Disposition.DELETE if erase else Disposition.EXPORT
        plans = tuple(
            LocationPlan(loc.template.text, disposition, self._count(loc, identities, erase))
            for loc in self.locations
        )
        return SourcePlan(self.name, KIND, plans)

    def export(self, identities: Identities) -> Iterator[FileItem]:
        for loc in self.locations:
            for prefix in self._expand(loc, identities):
                for obj in self.bucket.objects(prefix):
                    yield FileItem(
                        self.name,
                        obj["Key"],
                        partial(self.bucket.stream, obj["Key"]),
                        obj.get("Size"),
                        loc.meta,
                    )

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        """Delete up to min(batch_size, 1000) objects/versions; checkpoint = prefix index."""
        prefixes = self.prefixes(identities)
        index = int(checkpoint.get("next", 0))
        budget = max(1, min(batch_size, MAX_DELETE))
        deleted = 0
        while index < len(prefixes) and deleted < budget:
            batch, more = self.bucket.first_page(prefixes[index], budget - deleted)
            self.bucket.delete(batch)
            deleted += len(batch)
            if not more:
                index += 1
        return EraseResult(index >= len(prefixes), {"next": index}, deleted=deleted)

    def verify(self, identities: Identities) -> list[Residue]:
        residues = []
        for loc in self.locations:
            count = self._count(loc, identities, erase=True)
            if count:
                residues.append(Residue(f"{self.name}:{loc.template.text}", count))
        return residues

    def usage(self, identities: Identities) -> list[PrefixUsage]:
        """Objects and bytes per prefix template; reads only."""
        out = []
        for loc in self.locations:
            sizes = [
                int(obj.get("Size", 0))
                for prefix in self._expand(loc, identities)
                for obj in self.bucket.objects(prefix)
            ]
            out.append(PrefixUsage(loc.template.text, len(sizes), sum(sizes)))
        return out

    # --- retention (compliance.retention.policy.Retaining; see objectstore_retention) ------

    def retention_policies(self) -> tuple[Policy, ...]:
        return self.policies

    def retention_plan(self, policy: Policy, cutoff: datetime, held: Held) -> PolicyPlan:
        """Versions (or objects) past `cutoff` under the policy's prefix; writes nothing."""
        return self.retention.plan(policy, cutoff, held)

    def purge(
        self,
        policy: Policy,
        cutoff: datetime,
        cursor: Mapping[str, Any],
        limits: Limits,
        held: Held,
    ) -> PurgeResult:
        """Delete every version past `cutoff` and not held; the cursor holds counters only
        (no key), so each call lists again from the start of the prefix."""
        return self.retention.purge(policy, cutoff, cursor, limits, held)

    def retention_status(self, policy: Policy, now: datetime, held: Held) -> RetentionStatus:
        """The oldest version still under the prefix; how many are past the limit."""
        return self.retention.status(policy, now, held)

    def location_facts(self) -> Mapping[str, Art15]:
        """Per prefix template, the Art. 15 facts the manifest declares (`Describing`)."""
        return facts_by_template(self.locations)

    def close(self) -> None:
        self.bucket.client.close()

    def prefixes(self, identities: Identities) -> list[str]:
        """Every prefix of the subject (expanded templates; they hold personal data)."""
        return [p for loc in self.locations for p in self._expand(loc, identities)]

    def _expand(self, loc: Location, identities: Identities) -> list[str]:
        return loc.template.expand(identities, escape_s3_segment)

    def _count(self, loc: Location, identities: Identities, erase: bool) -> int:
        listing = self.bucket.deletable if erase else self.bucket.objects
        return sum(1 for p in self._expand(loc, identities) for _ in listing(p))
