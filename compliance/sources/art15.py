"""Art. 15 facts in words: retention policies phrased for a reader, and each plan
location's facts as the manifest declares them.

Which facts a location has follows one rule (`Art15`): the source's values apply to
each of its tables, prefixes and key patterns unless that location sets its own, and a
location's values never reach its siblings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from compliance.sources.base import Art15, DataSource, Describing, SourcePlan

_STAMP_SUFFIXES = ("_timestamp", "_date", "_time", "_at", "_on", "_ts")
_BARE_STAMPS = frozenset({"at", "on", "date", "time", "ts", "timestamp", "when"})
_IRREGULAR_PAST = frozenset({"paid", "sent", "seen", "made", "done", "built", "read", "set"})


def span(days: int) -> str:
    """A number of days as a reader says it: "30 days", "1 year", "10 years"."""
    years, rest = divmod(days, 365)
    if years and rest <= years // 4 + 1:  # whole years, leap days included
        return "1 year" if years == 1 else f"{years} years"
    return "1 day" if days == 1 else f"{days} days"


def moment(column: str) -> str:
    """What a timestamp column marks, in words: ``closed_at`` -> "it was closed"."""
    name = column.strip().lower()
    if name in _BARE_STAMPS:
        return "it was recorded"
    for suffix in _STAMP_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    words = " ".join(name.replace("-", "_").split("_")).strip()
    if not words:
        return "it was recorded"
    last = words.split()[-1]
    if last.endswith("ed") or last in _IRREGULAR_PAST:
        return f"it was {words}"
    return f"its {words} date"


def policy_text(days: int, column: str, *, whole_subject: bool, narrowed: bool) -> str:
    """One retention policy in words: "Deleted 30 days after it was created"."""
    verb = "Erased" if whole_subject else "Deleted"
    text = f"{verb} {span(days)} after {moment(column)}"
    return f"{text} (some records only)" if narrowed else text


def legal_text(days: int) -> str:
    """A legal minimum retention in words."""
    return f"Kept at least {span(days)}, as the law requires"


def location_facts(source: DataSource) -> Mapping[str, Art15]:
    """The Art. 15 facts the manifest declares for each location a source plans (its
    tables, prefixes, key patterns, endpoints): what the connector says (`Describing`);
    empty for one that says nothing."""
    return source.location_facts() if isinstance(source, Describing) else {}


def with_legal_bases(plan: SourcePlan, facts: Mapping[str, Art15]) -> SourcePlan:
    """`plan` with each location's legal basis filled from `facts` where the plan has
    none; a reference location (``payments.order_id``) takes its table's."""

    def basis(location: str) -> str:
        found = facts.get(location) or facts.get(location.partition(".")[0])
        return found.legal_basis if found else ""

    locations = tuple(
        loc if loc.legal_basis else replace(loc, legal_basis=basis(loc.location))
        for loc in plan.locations
    )
    return replace(plan, locations=locations)
