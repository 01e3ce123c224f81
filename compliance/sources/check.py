"""`gdpr sources check`: personal data that no registered source covers.

A source that can inspect its live system (the SQL connector reflects its database)
implements `gaps()`. A gap is a table that points at a table holding subject data, copies
a registered table, or has columns whose names look personal, without being in the
manifest. With the `strict_sources` setting, erasure refuses to start while any gap is
open: an erasure that cannot see all the data would leave some behind.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from compliance.errors import UnsupportedError
from compliance.sources.base import DataSource


class Kind(StrEnum):
    """What a personal-looking column seems to hold (the label a gap's reason uses)."""

    PERSONAL = "columns that look personal"
    PAYMENT = "card or bank data"
    CREDENTIAL = "credentials"
    IMAGE = "images of people"


# Whole words of a column name (split at "_", digits and case changes; also adjacent
# pairs and the whole name joined, and without a plural "s") that suggest personal data.
# Deliberately broad: `ignore_tables` acknowledges a reviewed table.
PERSONAL_WORDS = frozenset(
    {
        "email", "mail", "phone", "mobile", "msisdn", "fax", "ip", "ipaddress",
        "address", "addr", "street", "postcode", "zip", "zipcode", "postal",
        "birth", "birthday", "birthdate", "dob", "name", "firstname", "lastname",
        "surname", "fullname", "username", "ssn", "passport", "gender",
        "nationality", "latitude", "longitude",
    }
)  # fmt: skip
CARD_NUMBER_WORDS = frozenset({"ccn", "pan", "cardnumber", "cardno", "ccnumber", "ccnum"})
# A BIC names a bank, not a person: it is not on this list.
PAYMENT_WORDS = CARD_NUMBER_WORDS | {"cvv", "cvc", "csc", "securitycode", "cardcode", "iban"}
CREDENTIAL_WORDS = frozenset(
    {"password", "passwd", "pwd", "passphrase", "passcode", "secret", "token", "apikey"}
)
IMAGE_WORDS = frozenset({"picture", "photo", "avatar", "image", "selfie", "portrait"})
_KINDS = (  # the most specific first
    (Kind.PAYMENT, PAYMENT_WORDS),
    (Kind.CREDENTIAL, CREDENTIAL_WORDS),
    (Kind.IMAGE, IMAGE_WORDS),
    (Kind.PERSONAL, PERSONAL_WORDS),
)
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


def _words(column: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(column)]


def _candidates(column: str) -> set[str]:
    """The words of `column`, its adjacent pairs and the whole name, with and without
    a plural "s": ``creditCardNumbers`` -> ..., ``cardnumbers``, ``cardnumber``."""
    words = _words(column)
    found = {*words, "".join(words), *(a + b for a, b in itertools.pairwise(words))}
    return found | {w[:-1] for w in found if w.endswith("s")}


def classify(column: str) -> Kind | None:
    """What the column's name suggests it holds, or None if nothing personal."""
    candidates = _candidates(column)
    return next((kind for kind, words in _KINDS if candidates & words), None)


def looks_personal(column: str) -> bool:
    return classify(column) is not None


def personal_columns(columns: Sequence[str]) -> tuple[tuple[str, Kind], ...]:
    """The columns of one table whose names look personal, in table order. A bare
    ``code`` is card data when a card number sits beside it (a zip code is not)."""
    beside_card = any(_candidates(c) & CARD_NUMBER_WORDS for c in columns)
    found = []
    for column in columns:
        kind = classify(column)
        if kind is None and beside_card and _words(column) == ["code"]:
            kind = Kind.PAYMENT
        if kind is not None:
            found.append((column, kind))
    return tuple(found)


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
