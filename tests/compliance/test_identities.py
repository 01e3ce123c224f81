from __future__ import annotations

import pytest

from compliance.errors import ValidationError
from compliance.identities import (
    Identities,
    parse_identity,
    pseudonym,
    subject_pseudonym,
)

KEY = b"k" * 32


def test_email_is_normalised_to_lower_case_and_trimmed() -> None:
    assert parse_identity("email", "  Ada@Example.COM ").value == "ada@example.com"


@pytest.mark.parametrize("raw", ["ada", "ada@", "@mail.org", "a b@mail.org", "ada@ex"])
def test_malformed_email_is_refused_without_echoing_it(raw: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_identity("email", raw)
    assert raw not in str(info.value)


def test_phone_is_normalised_to_e164() -> None:
    assert parse_identity("phone", "0049 151 1234-5678").value == "+4915112345678"


@pytest.mark.parametrize(
    "raw", ["x' OR 1=1 --", "1; DROP TABLE users", "a" * 10_000, "id\x00null", "../../etc"]
)
def test_hostile_identity_strings_are_refused(raw: str) -> None:
    with pytest.raises(ValidationError):
        parse_identity("user_id", raw)


def test_unknown_identity_type_is_refused_and_custom_types_are_allowed() -> None:
    with pytest.raises(ValidationError, match="unknown identity type"):
        parse_identity("ssn", "123")
    assert parse_identity("custom:loyalty_no", "L-42").type == "custom:loyalty_no"


def test_identity_repr_never_shows_the_value() -> None:
    identity = parse_identity("email", "ada@example.com")
    assert "ada" not in repr(identity)
    assert "ada" not in str(identity)


def test_pseudonym_is_stable_keyed_and_independent_of_case() -> None:
    a = pseudonym(KEY, parse_identity("email", "Ada@Example.com"))
    b = pseudonym(KEY, parse_identity("email", "ada@example.com"))
    assert a == b
    assert a.startswith("ps_")
    assert len(a) == 35
    assert pseudonym(b"other-key" * 4, parse_identity("email", "ada@example.com")) != a


def test_subject_pseudonym_prefers_email_whatever_the_order() -> None:
    email = parse_identity("email", "ada@example.com")
    user = parse_identity("user_id", "1")
    assert subject_pseudonym(KEY, Identities.of([user, email])) == pseudonym(KEY, email)
    with pytest.raises(ValidationError):
        subject_pseudonym(KEY, Identities())
