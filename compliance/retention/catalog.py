"""Every retention policy of the registry, by name, with the source that enforces it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from compliance.errors import ManifestError, NotFoundError
from compliance.retention.policy import Policy, Retaining
from compliance.sources.base import DataSource


@dataclass(frozen=True)
class Entry:
    policy: Policy
    source: Retaining


@dataclass(frozen=True)
class Catalog:
    """The registry's policies in manifest order."""

    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, sources: Iterable[DataSource]) -> Catalog:
        """Collect the policies; two with one name are a manifest error naming both."""
        entries: list[Entry] = []
        seen: dict[str, str] = {}
        for source in sources:
            if not isinstance(source, Retaining):
                continue
            for policy in source.retention_policies():
                if policy.name in seen:
                    raise ManifestError(
                        f"{policy.entry}: retention policy name {policy.name!r} is already"
                        f" used by {seen[policy.name]}; give one of them a 'name'"
                    )
                seen[policy.name] = policy.entry
                entries.append(Entry(policy, source))
        return cls(tuple(entries))

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.policy.name == name:
                return entry
        names = ", ".join(e.policy.name for e in self.entries) or "none are declared"
        raise NotFoundError(f"no retention policy {name!r}; policies: {names}")

    def select(self, name: str | None) -> list[Entry]:
        """One policy by name, or all of them."""
        return list(self.entries) if name is None else [self.get(name)]
