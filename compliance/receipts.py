"""An erasure receipt: totals that agree with its lines, and its lines in the subject's words.

`compliance.erasure.receipt` builds the receipt from two records of each source: its erase
step's counts (what each batch changed) and the plan taken before the first batch (one
line per location: ``orders`` deleted 2, ``invoices`` retained 1). `reconcile` makes the
counts the sums of the lines, so the receipt, `gdpr request show` and the subject's email
tell one story:

- more erased than planned (a retry erasing what verification found left over, rows
  written meanwhile, a connector that counts per call, not per record) becomes a line of
  its own, ``found while erasing``;
- less (a batch repeated after a crash finds its rows gone and counts none) keeps the
  plan's count: the rows are gone, and verification checked it;
- retained rows are a state, not an action: the plan's count stands, however often a
  retry saw them again.

`summarise` turns a receipt into `ReceiptLine`s titled with the manifest's descriptions
("Your orders"), a humanised name where a location has none, never a dotted identifier
or a column name. Only the subject's own rows count; shared rows kept for other people
are listed apart; references inside kept rows and other people's rows are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from compliance.sources.base import Art15

COUNT_KEYS = ("deleted", "anonymized", "retained")
_DISPOSITIONS = {"deleted": "delete", "anonymized": "anonymize", "retained": "retain"}
FOUND_WHILE_ERASING = "found while erasing"
KEPT_FOR_OTHERS = "kept: rows of other people point at them"  # compliance.sources.sql.plan
EVERYWHERE = "*"

Facts = Mapping[str, Mapping[str, Art15]]  # source -> location -> what the manifest says

_FIELD = re.compile(r"\{[^{}]*\}")
_SEPARATORS = re.compile(r"[\s_./:*?\[\]{}()-]+")


def reconcile(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One source's receipt entry with its deleted/anonymized/retained counts equal to
    the sums of its own locations (module docstring). An entry without locations keeps
    its counts: they are its only line."""
    locations = [dict(loc) for loc in entry.get("locations") or []]
    out = dict(entry)
    if not locations:
        return out
    for key in COUNT_KEYS:
        planned = sum(count(loc, key) for loc in locations if _own(loc))
        extra = count(entry, key) - planned
        if extra > 0 and key != "retained":
            locations.append(
                {
                    "location": EVERYWHERE,
                    "disposition": _DISPOSITIONS[key],
                    key: extra,
                    "scope": "subject",
                    "note": FOUND_WHILE_ERASING,
                }
            )
            planned += extra
        out[key] = planned
    out["locations"] = locations
    return out


# --- in the subject's words --------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptLine:
    """What happened to one kind of the subject's data, titled for them."""

    title: str  # "Your orders"
    deleted: int = 0
    anonymized: int = 0
    retained: int = 0
    legal_basis: str = ""  # why anything is kept
    retention: str = ""  # how long what is kept stays ("10 years (commercial law)")
    for_others: bool = False  # kept, anonymised, because other people's records rely on it

    @property
    def text(self) -> str:
        """What happened, in words: "3 deleted", "your details removed, 1 kept for 10
        years (Art. 6(1)(c) GDPR: tax law)"."""
        parts = []
        if self.deleted:
            parts.append(f"{self.deleted} deleted")
        if self.anonymized:
            parts.append(f"your details removed, {self.anonymized} kept")
        if self.retained:
            parts.append(f"{self.retained} kept")
        said = ", ".join(parts)
        if not self.keeps:
            return said
        timed = self.retention[:1].isdigit()
        if timed:
            said += f" for {self.retention}"
        if self.legal_basis and said.endswith(")"):  # "for 10 years (commercial law; HGB)"
            said = f"{said[:-1]}; {self.legal_basis})"
        elif self.legal_basis:
            said += f" ({self.legal_basis})"
        if self.retention and not timed:
            said += f". {self.retention}"
        return said

    @property
    def keeps(self) -> bool:
        return bool(self.anonymized or self.retained)


@dataclass(frozen=True)
class SharedLine:
    """The subject's rows shared with other people (an address), kept for them."""

    title: str
    kept: int


@dataclass(frozen=True)
class HeldLine:
    """What a legal hold keeps for now, its basis and when the hold ends (if known)."""

    title: str
    legal_basis: str
    until: str | None = None  # ISO date


@dataclass(frozen=True)
class ReceiptSummary:
    lines: tuple[ReceiptLine, ...]
    verified: bool | None  # None: the receipt says nothing about verification
    held: tuple[HeldLine, ...] = ()  # kept by a legal hold, erased when it ends
    exports_removed: int = 0  # earlier exports' links revoked and packages deleted
    shared: tuple[SharedLine, ...] = ()

    @property
    def kept(self) -> tuple[ReceiptLine, ...]:
        return tuple(line for line in self.lines if line.keeps)

    def total(self, key: str) -> int:
        return sum(int(getattr(line, key)) for line in self.lines)

    @property
    def totals_text(self) -> str:
        """The totals in words: "18 records deleted, 2 kept with your details removed"."""
        deleted, anonymized, retained = (self.total(key) for key in COUNT_KEYS)
        parts = [f"{deleted} record{'s' if deleted != 1 else ''} deleted"]
        if anonymized:
            parts.append(f"{anonymized} kept with your details removed")
        if retained:
            parts.append(f"{retained} kept as {'it was' if retained == 1 else 'they were'}")
        return ", ".join(parts)


def summarise(receipt: Mapping[str, Any], facts: Facts | None = None) -> ReceiptSummary:
    """The receipt in the subject's words; `facts` (per source and location, from the
    manifest) give titles, legal bases and retention, else names are humanised."""
    facts = facts or {}
    entries = list(_entries(receipt))
    lines = sorted(_titled(list(_lines(entries, facts))), key=lambda line: line.keeps)
    return ReceiptSummary(
        lines=tuple(lines),
        verified=_verified(receipt),
        held=tuple(_held(receipt, facts)),
        exports_removed=_exports(receipt),
        shared=tuple(_shared(entries, facts)),
    )


def _entries(receipt: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The receipt's per-source entries (a list, or a mapping by source name)."""
    sources = receipt.get("sources") or []
    if isinstance(sources, Mapping):
        for name, entry in sources.items():
            if isinstance(entry, Mapping):
                yield {"source": str(name), **entry}
        return
    for entry in sources:
        if isinstance(entry, Mapping):
            yield entry


def _lines(entries: list[Mapping[str, Any]], facts: Facts) -> Iterator[tuple[str, ReceiptLine]]:
    """Per source, its own locations' lines, parents first."""
    for entry in entries:
        source = str(entry.get("source", ""))
        known = facts.get(source, {})
        locations = [loc for loc in entry.get("locations") or [] if isinstance(loc, Mapping)]
        if not locations:
            if any(count(entry, key) for key in COUNT_KEYS):
                yield source, _line(source, EVERYWHERE, entry, known)
            continue
        if entry.get("kind") == "sql":
            locations.reverse()  # a SQL plan lists children first: parents lead here
        lines = [
            _line(source, str(loc.get("location", "")), loc, known)
            for loc in locations
            if _own(loc) and any(count(loc, key) for key in COUNT_KEYS)
        ]
        for line in lines:
            yield source, line


def _line(
    source: str, location: str, counted: Mapping[str, Any], known: Mapping[str, Art15]
) -> ReceiptLine:
    fact = known.get(location) or Art15()
    note = str(counted.get("note") or "")
    for_others = note == KEPT_FOR_OTHERS
    title = title_of(source, location, known)
    if note == FOUND_WHILE_ERASING:
        title = "Other records of yours we found while erasing"
    elif for_others:
        title = _relied_on(title)
    basis = "" if for_others else str(counted.get("legal_basis") or fact.legal_basis)
    return ReceiptLine(
        title=title,
        deleted=count(counted, "deleted"),
        anonymized=count(counted, "anonymized"),
        retained=count(counted, "retained"),
        legal_basis=basis,
        retention="" if for_others else fact.retention,
        for_others=for_others,
    )


def _titled(found: list[tuple[str, ReceiptLine]]) -> list[ReceiptLine]:
    """The lines, a title two sources share told apart by its source's name."""
    sources_of: dict[str, set[str]] = {}
    for source, line in found:
        sources_of.setdefault(line.title, set()).add(source)
    out = []
    for source, line in found:
        if len(sources_of[line.title]) > 1:
            line = replace(line, title=f"{line.title} ({humanise(source)})")
        out.append(line)
    return out


def _shared(entries: list[Mapping[str, Any]], facts: Facts) -> Iterator[SharedLine]:
    for entry in entries:
        source = str(entry.get("source", ""))
        for loc in entry.get("locations") or []:
            if isinstance(loc, Mapping) and loc.get("scope") == "shared" and count(loc, "retained"):
                title = title_of(source, str(loc.get("location", "")), facts.get(source, {}))
                yield SharedLine(title, count(loc, "retained"))


def title_of(source: str, location: str, known: Mapping[str, Art15]) -> str:
    """A location's title: its description in the manifest, else its name in words
    (``order_items`` -> "Order items", ``avatars/{user_id}/`` -> "Avatars")."""
    fact = known.get(location)
    if fact is not None and fact.description:
        return fact.description
    everywhere = f"Your data in our {_words(source) or 'other'} records"
    if location == EVERYWHERE:
        return everywhere
    return humanise(location) or everywhere


def humanise(name: str) -> str:
    """A name in words, capitalised: template fields, wildcards and separators go."""
    words = _words(name)
    return words[:1].upper() + words[1:]


def _words(name: str) -> str:
    return _SEPARATORS.sub(" ", _FIELD.sub(" ", name)).strip()


def _relied_on(title: str) -> str:
    """ "Your orders" -> "Orders of yours that others still rely on"."""
    if title.lower().startswith("your ") and len(title) > 5:
        rest = title[5:]
        return f"{rest[:1].upper()}{rest[1:]} of yours that others still rely on"
    return f"{title} that others still rely on"


def _held(receipt: Mapping[str, Any], facts: Facts) -> Iterator[HeldLine]:
    for entry in receipt.get("held") or []:
        source = str(entry.get("source", ""))
        for hold in entry.get("holds") or []:
            location = str(hold.get("location") or EVERYWHERE)
            title = title_of(source, location, facts.get(source, {}))
            until = hold.get("until")
            yield HeldLine(title, str(hold.get("legal_basis", "")), until and str(until)[:10])


def _exports(receipt: Mapping[str, Any]) -> int:
    """How many export links and packages the erasure removed (``exports`` key)."""
    found = receipt.get("exports")
    if not isinstance(found, Mapping):
        return 0
    return count(found, "links_revoked") + count(found, "packages_deleted")


def _verified(receipt: Mapping[str, Any]) -> bool | None:
    value = receipt.get("verified", receipt.get("verification"))
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        if isinstance(value.get("ok"), bool):
            return bool(value["ok"])
        if "residue" in value:
            return not value["residue"]
    return None


def _own(loc: Mapping[str, Any]) -> bool:
    """A location counting the subject's own rows (not shared rows kept for others,
    other people's rows, or references inside kept rows)."""
    return bool(loc.get("scope", "subject") == "subject")


def count(node: Mapping[str, Any], key: str) -> int:
    value = node.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
