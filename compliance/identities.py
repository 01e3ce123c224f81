"""Identities of a data subject: types, validation, normalisation and pseudonyms.

An `Identity` is a (type, value) pair such as ``email:ada@example.com``. Values are
normalised before they are stored, hashed or matched, so ``Ada@Example.COM`` and
``ada@example.com`` are the same subject. A pseudonym is an HMAC of the normalised
identity under the installation's pseudonym key: stable, unlinkable without the key,
and the only form in which a subject appears in logs, audit events and messages.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from compliance.errors import ValidationError

MAX_VALUE_LENGTH = 320
PSEUDONYM_PREFIX = "ps_"


class IdentityType(StrEnum):
    """Built-in identity types; sources may declare custom ones (``custom:<name>``)."""

    EMAIL = "email"
    USER_ID = "user_id"
    PHONE = "phone"
    CUSTOMER_ID = "customer_id"


_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_CUSTOM_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_ID_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")


@dataclass(frozen=True, order=True)
class Identity:
    """One normalised identity of a subject. Build with `parse_identity`."""

    type: str
    value: str

    def __str__(self) -> str:  # never print the value by accident
        return f"{self.type}:<redacted>"

    def __repr__(self) -> str:
        return f"Identity(type={self.type!r}, value=<redacted>)"


@dataclass(frozen=True)
class Identities:
    """An immutable set of identities with lookups by type."""

    items: frozenset[Identity] = frozenset()

    @classmethod
    def of(cls, items: Iterable[Identity]) -> Identities:
        return cls(frozenset(items))

    def values(self, identity_type: str) -> list[str]:
        return sorted(i.value for i in self.items if i.type == identity_type)

    def types(self) -> set[str]:
        return {i.type for i in self.items}

    def union(self, other: Iterable[Identity]) -> Identities:
        return Identities(self.items | frozenset(other))

    def __iter__(self) -> Iterator[Identity]:
        return iter(sorted(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


def validate_type(identity_type: str) -> str:
    """Return the identity type, or raise a clear error if it is not a known form."""
    if identity_type in IdentityType.__members__.values():
        return identity_type
    if identity_type.startswith("custom:") and _CUSTOM_TYPE.match(identity_type[7:]):
        return identity_type
    known = ", ".join(t.value for t in IdentityType)
    raise ValidationError(
        f"unknown identity type {_safe(identity_type)}; use one of {known} or custom:<name>"
    )


def parse_identity(identity_type: str, raw: str) -> Identity:
    """Validate and normalise one identity; a `ValidationError` never echoes the value."""
    identity_type = validate_type(identity_type)
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError(f"{identity_type} is empty; give a value")
    if len(raw) > MAX_VALUE_LENGTH:
        raise ValidationError(f"{identity_type} is longer than {MAX_VALUE_LENGTH} characters")
    value = unicodedata.normalize("NFKC", raw).strip()
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise ValidationError(f"{identity_type} contains control characters; remove them")
    return Identity(identity_type, _normalise(identity_type, value))


def _normalise(identity_type: str, value: str) -> str:
    if identity_type == IdentityType.EMAIL:
        if len(value) > 254 or not _EMAIL.match(value) or len(value.split("@")[0]) > 64:
            raise ValidationError("email is malformed; expected something like name@example.com")
        return value.lower()
    if identity_type == IdentityType.PHONE:
        digits = re.sub(r"[\s().-]", "", value)
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        if not _PHONE.match(digits):
            raise ValidationError(
                "phone is malformed; use international format like +4915112345678"
            )
        return digits
    if not _ID_VALUE.match(value):
        raise ValidationError(
            f"{identity_type} is malformed; use up to 128 letters, digits and . _ : @ + -"
        )
    return value


def pseudonym(key: bytes, identity: Identity) -> str:
    """The HMAC pseudonym of one identity: ``ps_`` + 32 hex characters (128 bits)."""
    digest = hmac.new(key, f"{identity.type}\x00{identity.value}".encode(), hashlib.sha256)
    return PSEUDONYM_PREFIX + digest.hexdigest()[:32]


def subject_pseudonym(key: bytes, identities: Identities) -> str:
    """The pseudonym a request's subject is known by: that of its first identity by type
    priority (email, then user id, phone, customer id, custom types)."""
    if not identities:
        raise ValidationError("a request needs at least one identity, e.g. --email")
    order = [t.value for t in IdentityType]
    first = min(
        identities.items,
        key=lambda i: (order.index(i.type) if i.type in order else len(order), i.type, i.value),
    )
    return pseudonym(key, first)


def _safe(text: str) -> str:
    """A short, printable rendering of user input for error messages (types, not values)."""
    clipped = "".join(ch if ch.isprintable() else "?" for ch in text[:40])
    return repr(clipped + ("..." if len(text) > 40 else ""))
