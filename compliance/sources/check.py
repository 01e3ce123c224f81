"""`gdpr sources check`: personal data that no registered source covers.

A source that can inspect its live system (the SQL connector reflects its database)
implements `gaps()`. A gap is a table that points at a table holding subject data, or
has columns whose names look personal, without being in the manifest. With the
`strict_sources` setting, erasure refuses to start while any gap is open: an erasure
that cannot see all the data would leave some behind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from compliance.errors import UnsupportedError
from compliance.sources.base import DataSource

# Whole words of a column name (split at "_", digits and case changes) that suggest
# personal data. Deliberately broad: `ignore_tables` acknowledges a reviewed table.
PERSONAL_WORDS = frozenset(
    {
        "email", "mail", "phone", "mobile", "msisdn", "fax", "ip", "ipaddress",
        "address", "addr", "street", "postcode", "zip", "zipcode", "postal",
        "birth", "birthday", "birthdate", "dob", "name", "firstname", "lastname",
        "surname", "fullname", "username", "ssn", "passport", "iban", "gender",
        "nationality", "latitude", "longitude",
    }
)  # fmt: skip
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")


@dataclass(frozen=True)
class Gap:
    """Possibly personal data outside the manifest (names only, never values)."""

    source: str
    location: str  # e.g. a table name
    reason: str
    columns: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.source}: {self.location}: {self.reason}"


@runtime_checkable
class Inspectable(Protocol):
    def gaps(self) -> list[Gap]: ...


def looks_personal(column: str) -> bool:
    words = [w.lower() for w in _WORD.findall(column)]
    joined = "".join(words)
    return any(w in PERSONAL_WORDS for w in words) or joined in PERSONAL_WORDS


def find_gaps(sources: Iterable[DataSource]) -> list[Gap]:
    """Every gap of every source that can inspect its live system."""
    found: list[Gap] = []
    for source in sources:
        if isinstance(source, Inspectable):
            found.extend(source.gaps())
    return found


def refuse_if_gaps(sources: Iterable[DataSource]) -> None:
    """Strict mode: raise while any gap is open, listing them (names only)."""
    gaps = find_gaps(sources)
    if gaps:
        listed = "; ".join(str(g) for g in gaps[:10])
        more = f" (and {len(gaps) - 10} more)" if len(gaps) > 10 else ""
        raise UnsupportedError(
            f"strict_sources is on and `gdpr sources check` finds {len(gaps)} gap(s): "
            f"{listed}{more}; register or ignore them in the manifest"
        )
