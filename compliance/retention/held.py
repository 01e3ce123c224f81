"""What legal holds keep out of a sweep's reach, resolved once per chunk of work.

Holds store subjects as pseudonyms only. To keep a held subject's rows, a sweep needs
their identities at the sources: `HoldView` finds them by hashing the identity columns
of the SQL sources (`find_subjects`) and resolving across every source from there, in
memory, for as long as the chunk runs. A hold without a subject covers whole sources or
locations, whoever's the data is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from compliance import holds
from compliance.cascade import resolve
from compliance.db import Database
from compliance.identities import Identities
from compliance.models import LegalHold
from compliance.retention.policy import Held, Policy
from compliance.sources.base import DataSource


@dataclass(frozen=True)
class HoldView:
    """The holds in force at one moment, and the held subjects' identities."""

    active: Sequence[LegalHold]
    identities: Identities  # of every held subject, found at the sources

    @classmethod
    def load(cls, db: Database, sources: Sequence[DataSource], now: datetime) -> HoldView:
        with db.session() as session:
            active = holds.active(session, now)
        pseudonyms = frozenset(
            p for h in active if h.subject for p in (*h.identity_hmacs, h.subject)
        )
        found = _recovered(sources, pseudonyms) if pseudonyms else Identities.of(())
        return cls(tuple(active), found)

    def held(self, policy: Policy) -> Held:
        """The holds reaching `policy`'s source and location."""
        whole = [h for h in self.active if holds.whole(h, policy.source, policy.location)]
        subjects = [
            h for h in self.active if h.subject and holds.covers(h, policy.source, policy.location)
        ]
        basis = "; ".join(sorted({h.legal_basis for h in (*whole, *subjects)}))
        identities = self.identities if subjects and not whole else Identities.of(())
        return Held(identities=identities, whole=bool(whole), basis=basis)

    def holds_subject(self, policy: Policy, pseudonyms: Iterable[str]) -> bool:
        """A hold keeps this subject's data at `policy`'s source and location."""
        known = set(pseudonyms)
        return any(
            holds.covers(h, policy.source, policy.location) and holds.applies_to_subject(h, known)
            for h in self.active
        )


RECOVERED_SECONDS = 300.0  # held subjects found at the sources are reused this long
_recovered_cache: dict[tuple[int, frozenset[str]], tuple[float, Identities]] = {}
_cache_lock = threading.Lock()


def _recovered(sources: Sequence[DataSource], pseudonyms: frozenset[str]) -> Identities:
    """`recover`, reused for a few minutes: finding held subjects reads every identity
    column, and a sweep asks again for every chunk of every part."""
    key = (id(sources), pseudonyms)
    with _cache_lock:
        cached = _recovered_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < RECOVERED_SECONDS:
        return cached[1]
    found = recover(sources, pseudonyms)
    with _cache_lock:
        _recovered_cache.clear()  # one set of holds at a time is enough
        _recovered_cache[key] = (time.monotonic(), found)
    return found


def recover(sources: Sequence[DataSource], pseudonyms: frozenset[str]) -> Identities:
    """The identities behind `pseudonyms`, found at the sources and resolved across them."""
    found = Identities.of(())
    for source in sources:
        finder = getattr(source, "find_subjects", None)
        if callable(finder):
            found = found.union(finder(pseudonyms))
    return resolve(sources, found) if found else found
