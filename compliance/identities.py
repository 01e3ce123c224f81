"""Identities of a data subject: types, validation, normalisation and pseudonyms.

An `Identity` is a (type, value) pair such as ``email:ada@example.com``. A pseudonym is
an HMAC of the identity under the installation's pseudonym key: stable, unlinkable
without the key, and the only form in which a subject appears in logs, audit events and
messages.

A value is what the operator typed. `parse_identity` changes it only in ways that cannot
turn one person's identity into another's:

- surrounding whitespace is removed;
- an email address is checked by `email_validator` (RFC 5321/5322, RFC 6531/6532 for
  international addresses, IDNA 2008 for the domain) and lower-cased, and its domain is
  kept in Unicode form: ``Ada@Example.COM`` and ``ada@example.com`` are the same subject,
  and so are ``jürgen@MÜNCHEN.de`` and ``jürgen@xn--mnchen-3ya.de``. Addresses at
  special-use domains (``localhost``, ``.local``, ``.test``, ``.invalid``...) are refused:
  nobody can be written to there;
- a phone number loses its formatting (spaces of any kind and ``( ) . -``), and a
  leading ``00`` becomes ``+``.

Anything else Unicode normalisation would change is refused, never folded: a lookalike
pasted from a ticket (a full-width ``ada@example.com``, a superscript one as user id)
would otherwise become somebody else's identity. A value is refused when

- it holds an invisible or control character: categories Cc, Cf, Cs, Co, Cn (zero-width
  space, bidi overrides, soft hyphen) or another default-ignorable code point
  (variation selectors, Hangul fillers);
- it is not in NFC (composed) form: ``u`` + U+0308 COMBINING DIAERESIS is refused,
  ``ü`` as one character (``jürgen@example.de``) is accepted; so is a canonical
  singleton such as U+212A KELVIN SIGN refused, which NFC (and lower-casing) would
  turn into ``K`` (``k``);
- its NFKC form differs from its NFC form: compatibility characters such as full-width
  forms, superscripts, ligatures (``ﬁ``) and the no-break space (in a phone number any
  space is formatting and allowed);
- a phone number holds a digit other than ASCII 0-9 (Arabic-Indic, full-width,
  superscript).

Emails may contain letters, marks and digits of any script (RFC 6531), up to 254
characters; phone numbers up to 64 characters as typed; user ids, customer ids and
custom identities are ASCII, up to 128 characters. A `ValidationError` never echoes the
value: it names the first offending character by code point, name and position
(``U+FF41 FULLWIDTH LATIN SMALL LETTER A at position 1``) and how many more there are.
Sources compare values as given (`compliance.sources.sql.keys.coerce`: ``01`` is not
``1``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import email_validator

from compliance.errors import ValidationError

MAX_EMAIL_LENGTH = 254  # RFC 5321's limit on a forward path, less its angle brackets
MAX_PHONE_LENGTH = 64  # as typed, formatting included; E.164 itself is at most 15 digits
MAX_ID_LENGTH = 128
PSEUDONYM_PREFIX = "ps_"


class IdentityType(StrEnum):
    """Built-in identity types; sources may declare custom ones (``custom:<name>``)."""

    EMAIL = "email"
    USER_ID = "user_id"
    PHONE = "phone"
    CUSTOMER_ID = "customer_id"


_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_PHONE_FORMATTING = re.compile(r"[ ().-]")
_ASCII_DIGITS = frozenset("0123456789")
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_DEFAULT_IGNORABLE = (  # DerivedCoreProperties.txt, Default_Ignorable_Code_Point
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_CUSTOM_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_ID_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$")
_ID_RULE = f"use up to {MAX_ID_LENGTH} letters, digits and . _ : @ + -"


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
    """Validate and normalise one identity (module docstring); a `ValidationError` never
    echoes the value."""
    identity_type = validate_type(identity_type)
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError(f"{identity_type} is empty; give a value")
    value = raw.strip()
    _refuse_too_long(identity_type, value)
    _refuse_lookalikes(identity_type, value, start=len(raw) - len(raw.lstrip()))
    return Identity(identity_type, _normalise(identity_type, value))


def _refuse_too_long(identity_type: str, value: str) -> None:
    """Raise, naming the rule, if `value` is longer than its type allows."""
    if identity_type == IdentityType.EMAIL and len(value) > MAX_EMAIL_LENGTH:
        raise ValidationError(
            f"email is longer than {MAX_EMAIL_LENGTH} characters, the most an address can have"
        )
    if identity_type == IdentityType.PHONE and len(value) > MAX_PHONE_LENGTH:
        raise ValidationError(
            f"phone is longer than {MAX_PHONE_LENGTH} characters;"
            " use international format like +4915112345678"
        )
    if identity_type not in (IdentityType.EMAIL, IdentityType.PHONE) and len(value) > MAX_ID_LENGTH:
        raise ValidationError(
            f"{identity_type} is longer than {MAX_ID_LENGTH} characters; {_ID_RULE}"
        )


def _refuse_lookalikes(identity_type: str, value: str, start: int) -> None:
    """Raise if normalisation would change `value` beyond case and formatting; `start`
    is where `value` begins in what was typed (positions in the message count from 1)."""
    found = _lookalikes(identity_type, value)
    if found is None:
        return
    problem, fix, positions = found
    first = _describe(value[positions[0]], start + positions[0] + 1)
    more = f", and {len(positions) - 1} more" if len(positions) > 1 else ""
    raise ValidationError(f"{identity_type} {problem} ({first}{more}); {fix}")


def _lookalikes(identity_type: str, value: str) -> tuple[str, str, list[int]] | None:
    """What is wrong with `value`, how to fix it, and where; None: nothing."""
    invisible = [i for i, ch in enumerate(value) if _invisible(ch)]
    if invisible:
        return (
            "contains an invisible or control character",
            "delete it, or retype the value by hand",
            invisible,
        )
    if identity_type == IdentityType.PHONE:
        digits = [i for i, ch in enumerate(value) if ch.isdigit() and ch not in _ASCII_DIGITS]
        if digits:
            return "has a digit other than 0-9", "type the number with digits 0-9", digits
        value = _plain_spaces(value)
    if not unicodedata.is_normalized("NFC", value):
        return (
            "is not in composed Unicode form (NFC)",
            "retype it by hand so that each accented letter is one character",
            [_first_uncomposed(value)],
        )
    compatible = [i for i, ch in enumerate(value) if unicodedata.normalize("NFKC", ch) != ch]
    if compatible:
        return (
            "contains look-alike characters",
            "retype it in plain characters, without full-width forms, superscripts, "
            "ligatures or special spaces",
            compatible,
        )
    if identity_type == IdentityType.EMAIL:
        symbols = [i for i, ch in enumerate(value) if ord(ch) > 127 and not _word_character(ch)]
        if symbols:
            return (
                "is malformed: beyond ASCII it may hold only letters, marks and digits",
                "retype it without symbols such as emoji",
                symbols,
            )
    return None


def _word_character(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LMN"


def _invisible(ch: str) -> bool:
    if unicodedata.category(ch) in _INVISIBLE_CATEGORIES:
        return True
    code = ord(ch)
    return any(low <= code <= high for low, high in _DEFAULT_IGNORABLE)


def _first_uncomposed(value: str) -> int:
    """The position of the first character at which `value` stops being in NFC form."""
    for end in range(1, len(value) + 1):
        if not unicodedata.is_normalized("NFC", value[:end]):
            return end - 1
    return 0


def _describe(ch: str, position: int) -> str:
    """One character for an error message: code point and name, never the character."""
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}{' ' + name if name else ''} at position {position}"


def _plain_spaces(value: str) -> str:
    """`value` with every space character (no-break, thin, ideographic...) as ``' '``."""
    return "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in value)


def _normalise(identity_type: str, value: str) -> str:
    if identity_type == IdentityType.EMAIL:
        return _normalise_email(value)
    if identity_type == IdentityType.PHONE:
        digits = _PHONE_FORMATTING.sub("", _plain_spaces(value))
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        if not _PHONE.fullmatch(digits):
            raise ValidationError(
                "phone is malformed; use international format like +4915112345678"
            )
        return digits
    if not _ID_VALUE.fullmatch(value):
        raise ValidationError(f"{identity_type} is malformed; {_ID_RULE}")
    return value


def _normalise_email(value: str) -> str:
    """The address checked by `email_validator`, its domain in Unicode (IDNA 2008), all
    lower-cased, in NFC; the library's reason for a refusal, never the address."""
    try:
        found = email_validator.validate_email(
            value, check_deliverability=False, allow_smtputf8=True, strict=True
        )
    except email_validator.EmailNotValidError as exc:
        raise ValidationError(
            f"email is malformed ({_reason(exc)}); expected something like name@example.com"
        ) from None
    return unicodedata.normalize("NFC", found.normalized.lower())


def _reason(exc: Exception) -> str:
    """The library's message up to any quoted character list or detail, which could show
    part of the address: ``the part after the @-sign contains invalid characters``."""
    text = re.split(r"[:(]", str(exc), maxsplit=1)[0].strip().rstrip(".")
    return (text[:1].lower() + text[1:]) or "not an address"


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
