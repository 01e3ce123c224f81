"""Operator free text: ticket references, notes and reasons, kept free of personal data.

These texts are stored in plain text and printed by `gdpr request list` and `show`, so
they must not name the subject. `check_text` refuses a text that

- is longer than its limit, or holds control characters;
- holds something shaped like an email address (``name@domain.tld``, any script);
- holds something shaped like a phone number: international (``+49 151 1234 5678``),
  national with a leading 0 and at least 7 digits (``0151 12345678``), or North
  American (``(555) 123-4567``, ``555-123-4567``); dates (``31.01.2026``,
  ``2026-01-31``) are not phone numbers, and neither are digits glued to a reference
  (``INC-0001234567``);
- holds one of the identity values given with it (the subject's user id, customer id...)
  as a whole word, case-insensitively; a value shorter than 4 characters (``1``, ``42``)
  only when it is the whole text, since ``T-1`` is ticket 1, not a reference to user 1.

Refusals say what the text looks like it holds, never the text itself. `redact` blanks
the same shapes out of a message that echoes what was typed (a usage error).
"""

from __future__ import annotations

import re
import unicodedata

from compliance.errors import ValidationError
from compliance.identities import Identities

MIN_WORD_IDENTITY = 4  # shorter identity values are refused only as the whole text
REDACTED = "<redacted>"

_EMAIL = re.compile(r"[^\s@<>()\[\],;:\"']+@[^\s@<>()\[\],;:\"']+\.[^\s@<>()\[\],;:\"'.]{2,}")
_SEP = r"[ \t().\-/]*"
_PHONES = (
    re.compile(rf"(?<![\w+])\+{_SEP}[0-9](?:{_SEP}[0-9]){{6,14}}(?![0-9])"),
    re.compile(rf"(?<![\w-])\(?0(?:{_SEP}[0-9]){{6,}}(?![0-9])"),
    re.compile(r"(?<![\w-])(?:\([0-9]{3}\) ?|[0-9]{3}[-. ])[0-9]{3}[-. ][0-9]{4}(?![0-9])"),
)
_DATES = re.compile(
    r"(?<![0-9])(?:[0-9]{1,2}[./-][0-9]{1,2}[./-][0-9]{2,4}|[0-9]{4}-[0-9]{2}-[0-9]{2})(?![0-9])"
)
_ADVICE = (
    "it is stored and shown in plain text: use a reference like T-1042, or say how"
    " the subject was verified without naming them"
)


def check_text(
    name: str, value: str | None, limit: int, identities: Identities | None = None
) -> None:
    """Refuse operator text that is too long, holds control characters or looks like it
    holds personal data (module docstring); `identities`: those given with it."""
    if value is None:
        return
    if len(value) > limit:
        raise ValidationError(f"{name} is longer than {limit} characters; shorten it")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in value):
        raise ValidationError(f"{name} contains control characters; remove them")
    found = personal_data(value, identities)
    if found is not None:
        raise ValidationError(f"{name} looks like it holds {found}; {_ADVICE}")


def personal_data(text: str, identities: Identities | None = None) -> str | None:
    """What `text` looks like it holds ("an email address", "the subject's user_id"...),
    or None."""
    if _EMAIL.search(text):
        return "an email address"
    if any(pattern.search(_without_dates(text)) for pattern in _PHONES):
        return "a phone number"
    for identity in identities or ():
        if _mentions(text, identity.value):
            return f"the subject's {identity.type}"
    return None


def redact(text: str) -> str:
    """`text` with anything shaped like an email address or phone number blanked out."""
    text = _EMAIL.sub(REDACTED, text)
    for pattern in _PHONES:
        text = pattern.sub(lambda m: m.group() if _DATES.fullmatch(m.group()) else REDACTED, text)
    return text


def _without_dates(text: str) -> str:
    return _DATES.sub(" ", text)


def _mentions(text: str, value: str) -> bool:
    text = unicodedata.normalize("NFC", text)
    if len(value) < MIN_WORD_IDENTITY:
        return text.strip().casefold() == value.casefold()
    word = rf"(?<![^\W_]){re.escape(value)}(?![^\W_])"
    return re.search(word, text, flags=re.IGNORECASE) is not None
