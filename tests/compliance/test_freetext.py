from __future__ import annotations

import pytest

from compliance.errors import ValidationError
from compliance.freetext import check_text, personal_data, redact
from compliance.identities import Identities, parse_identity

SUBJECT = Identities.of(
    [
        parse_identity("email", "ada@example.com"),
        parse_identity("user_id", "1"),
        parse_identity("customer_id", "C-77812"),
    ]
)


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("ada@example.com called", "an email address"),
        ("mail from J\u00fcrgen@m\u00fcnchen.de", "an email address"),
        ("call +49 151 1234 5678", "a phone number"),
        ("+4915112345678", "a phone number"),
        ("rang from 0151 12345678", "a phone number"),
        ("(555) 123-4567 left a message", "a phone number"),
        ("555-123-4567", "a phone number"),
        ("customer C-77812 asked", "the subject's customer_id"),
        ("c-77812", "the subject's customer_id"),
        ("1", "the subject's user_id"),
    ],
)
def test_text_shaped_like_personal_data_is_recognised(text: str, what: str) -> None:
    assert personal_data(text, SUBJECT) == what


@pytest.mark.parametrize(
    "text",
    [
        "T-1042",
        "T-1",
        "INC-0001234567",
        "verified via account login on 31.01.2026",
        "verified 2026-01-31 by video call",
        "Art. 17(3)(e) GDPR, case 2026/14",
        "C-778123 is another customer",
        "ticket 42 of 2026",
    ],
)
def test_ordinary_references_notes_and_dates_are_accepted(text: str) -> None:
    assert personal_data(text, SUBJECT) is None
    check_text("note", text, 2000, SUBJECT)


def test_a_refusal_names_the_field_and_the_fix_never_the_text() -> None:
    with pytest.raises(ValidationError) as info:
        check_text("ticket", "ada@example.com called", 128)
    message = str(info.value)
    assert message.startswith("ticket looks like it holds an email address; it is stored and")
    assert "T-1042" in message and "ada" not in message and "\n" not in message


def test_length_and_control_characters_are_still_refused() -> None:
    with pytest.raises(ValidationError, match="ticket is longer than 128 characters"):
        check_text("ticket", "x" * 129, 128)
    with pytest.raises(ValidationError, match="note contains control characters"):
        check_text("note", "x\x1b[31m", 2000)


def test_redact_blanks_addresses_and_phone_numbers_but_keeps_dates() -> None:
    text = "Got unexpected extra arguments (ada@example.com +49 151 1234 5678 2026-01-31)"
    assert redact(text) == "Got unexpected extra arguments (<redacted> <redacted> 2026-01-31)"
