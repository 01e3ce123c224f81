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


# --- lookalikes: what normalisation would change is refused, never folded ---------------

FULLWIDTH_ADA = "\uff41\uff44\uff41@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.\uff43\uff4f\uff4d"


def refusal(identity_type: str, raw: str) -> str:
    """The one-line message `parse_identity` refuses `raw` with."""
    with pytest.raises(ValidationError) as info:
        parse_identity(identity_type, raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_full_width_email_is_refused_not_folded_into_ada() -> None:
    message = refusal("email", FULLWIDTH_ADA)
    assert message == (
        "email contains look-alike characters (U+FF41 FULLWIDTH LATIN SMALL LETTER A at "
        "position 1, and 12 more); retype it in plain characters, without full-width "
        "forms, superscripts, ligatures or special spaces"
    )
    assert FULLWIDTH_ADA not in message
    assert "ada" not in message


@pytest.mark.parametrize(
    ("identity_type", "raw", "offender"),
    [
        ("user_id", "\u00b9", "U+00B9 SUPERSCRIPT ONE at position 1"),
        ("user_id", "4\u00b2", "U+00B2 SUPERSCRIPT TWO at position 2"),
        ("user_id", "\uff11", "U+FF11 FULLWIDTH DIGIT ONE at position 1"),
        ("customer_id", "C-\uff10\uff10\uff10\uff11", "U+FF10 FULLWIDTH DIGIT ZERO at position 3"),
        ("email", "\ufb01ona@example.com", "U+FB01 LATIN SMALL LIGATURE FI at position 1"),
        ("email", "ada@exa\ufb03e.com", "U+FB03 LATIN SMALL LIGATURE FFI at position 8"),
        ("email", "ada\u00a0@example.com", "U+00A0 NO-BREAK SPACE at position 4"),
    ],
)
def test_compatibility_characters_are_refused_naming_the_first_one(
    identity_type: str, raw: str, offender: str
) -> None:
    message = refusal(identity_type, raw)
    assert message.startswith(f"{identity_type} contains look-alike characters ({offender}")


@pytest.mark.parametrize(
    ("raw", "offender"),
    [
        ("ada\u200b@example.com", "U+200B ZERO WIDTH SPACE at position 4"),
        ("\u202eada@example.com", "U+202E RIGHT-TO-LEFT OVERRIDE at position 1"),
        ("ada@example.com\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE at position 16"),
        ("a\u00adda@example.com", "U+00AD SOFT HYPHEN at position 2"),
        ("ada\ufe0f@example.com", "U+FE0F VARIATION SELECTOR-16 at position 4"),
        ("\ufeffada@example.com", "U+FEFF ZERO WIDTH NO-BREAK SPACE at position 1"),
        ("ada@exam\u3164ple.com", "U+3164 HANGUL FILLER at position 9"),
    ],
)
def test_invisible_and_bidi_characters_are_refused(raw: str, offender: str) -> None:
    assert refusal("email", raw) == (
        f"email contains an invisible or control character ({offender}); "
        "delete it, or retype the value by hand"
    )


def test_zero_width_space_in_a_user_id_is_refused() -> None:
    assert "U+200B ZERO WIDTH SPACE at position 2" in refusal("user_id", "1\u200b")


def test_positions_count_from_the_value_as_typed_including_leading_spaces() -> None:
    assert "at position 3" in refusal("user_id", "  \u00b9")


def test_several_offending_characters_are_counted_not_shown() -> None:
    message = refusal("user_id", "\uff11\uff12\uff13")
    assert "U+FF11 FULLWIDTH DIGIT ONE at position 1, and 2 more" in message
    assert "TWO" not in message and "THREE" not in message


@pytest.mark.parametrize("raw", ["+44 \u0661\u0662\u0663 4567890", "+44 \u06f1234567890"])
def test_phone_with_arabic_indic_digits_is_refused(raw: str) -> None:
    message = refusal("phone", raw)
    assert message.startswith("phone has a digit other than 0-9 (U+06")
    assert "DIGIT ONE at position 5" in message
    assert message.endswith("; type the number with digits 0-9")


@pytest.mark.parametrize(
    ("raw", "offender"),
    [
        ("+44 \uff11234567890", "U+FF11 FULLWIDTH DIGIT ONE at position 5"),
        ("+44 1234567890\u00b9", "U+00B9 SUPERSCRIPT ONE at position 15"),
    ],
)
def test_phone_with_full_width_or_superscript_digits_is_refused(raw: str, offender: str) -> None:
    assert refusal("phone", raw).startswith(f"phone has a digit other than 0-9 ({offender}")


def test_phone_formatting_with_any_kind_of_space_is_still_stripped() -> None:
    typed = "+49\u00a0(151)\u20091234\u3000-5678"
    assert parse_identity("phone", typed).value == "+4915112345678"
    assert parse_identity("phone", "+49 (151) 1234.5678").value == "+4915112345678"


def test_phone_with_a_zero_width_space_is_refused() -> None:
    assert "U+200B ZERO WIDTH SPACE at position 4" in refusal("phone", "+49\u200b15112345678")


def test_composed_international_email_is_accepted() -> None:
    assert parse_identity("email", "j\u00fcrgen@example.de").value == "j\u00fcrgen@example.de"


def test_international_email_with_capitals_is_lower_cased() -> None:
    assert parse_identity("email", "J\u00dcRGEN@Example.DE").value == "j\u00fcrgen@example.de"
    local = "\u0394\u03bf\u03ba\u03b9\u03bc\u03ae"  # Greek, composed, capital first
    greek = local + "@\u03c0\u03b1\u03c1\u03ac\u03b4\u03b5\u03b9\u03b3\u03bc\u03b1.gr"
    assert parse_identity("email", greek).value == greek.lower()


def test_decomposed_email_is_refused_naming_the_combining_mark() -> None:
    message = refusal("email", "ju\u0308rgen@example.de")
    assert message == (
        "email is not in composed Unicode form (NFC) (U+0308 COMBINING DIAERESIS at "
        "position 3); retype it by hand so that each accented letter is one character"
    )


def test_kelvin_sign_is_refused_rather_than_lower_cased_into_k() -> None:
    assert "U+212A KELVIN SIGN at position 1" in refusal("email", "\u212aate@example.com")


@pytest.mark.parametrize(
    "raw", ["Ada@Example.COM", "ADA@EXAMPLE.COM", "\tada@example.com\n", "ada@example.com"]
)
def test_ordinary_email_with_capitals_and_spaces_is_accepted_and_lower_cased(raw: str) -> None:
    assert parse_identity("email", raw).value == "ada@example.com"


@pytest.mark.parametrize("raw", ["01", "1e0", "1.0", "C-0001", "c-0001"])
def test_ids_are_kept_as_typed(raw: str) -> None:
    assert parse_identity("customer_id", raw).value == raw


def test_email_with_symbols_outside_letters_and_digits_is_malformed() -> None:
    assert refusal("email", "ada\u2603@example.com").startswith("email is malformed")


def test_non_ascii_letters_in_ids_are_refused() -> None:
    assert "malformed" in refusal("user_id", "\u00fcser1")


# --- international addresses (RFC 6531/6532) and IDN domains ----------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "j\u00fcrgen@m\u00fcnchen.de",
        "J\u00dcRGEN@M\u00dcNCHEN.DE",
        "j\u00fcrgen@xn--mnchen-3ya.de",
        "J\u00fcrgen@XN--MNCHEN-3YA.de",
        "  j\u00fcrgen@M\u00fcnchen.de\t",
    ],
)
def test_one_international_address_has_one_value_and_pseudonym_however_typed(typed: str) -> None:
    canonical = parse_identity("email", "j\u00fcrgen@m\u00fcnchen.de")
    assert canonical.value == "j\u00fcrgen@m\u00fcnchen.de"
    identity = parse_identity("email", typed)
    assert identity.value == canonical.value
    assert pseudonym(KEY, identity) == pseudonym(KEY, canonical)


def test_addresses_in_other_scripts_are_accepted() -> None:
    assert parse_identity("email", "\u7528\u6237@\u4f8b\u3048.jp").value == (
        "\u7528\u6237@\u4f8b\u3048.jp"
    )
    assert parse_identity("email", "\u0937\u093f\u092a@example.in").type == "email"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("ada@localhost", "should have a period"),
        ("ada@printer.local", "special-use or reserved name"),
        ("ada@example.test", "special-use or reserved name"),
        ("ada..b@example.com", "two periods in a row"),
        ("ada@-example.com", "hyphen immediately after the @-sign"),
        ("x" * 65 + "@example.com", "too long before the @-sign"),
        ("ada@exam_ple.com", "the part after the @-sign contains invalid characters"),
    ],
)
def test_malformed_addresses_give_the_reason_without_the_address(raw: str, reason: str) -> None:
    message = refusal("email", raw)
    assert message.startswith("email is malformed (")
    assert reason in message
    assert raw not in message and "'_'" not in message


@pytest.mark.parametrize(
    ("identity_type", "raw", "rule"),
    [
        ("user_id", "7" * 10_000, "user_id is longer than 128 characters; use up to 128 letters"),
        ("customer_id", "C" * 129, "customer_id is longer than 128 characters"),
        ("custom:loyalty_no", "L" * 200, "custom:loyalty_no is longer than 128 characters"),
        ("email", "a" * 250 + "@example.com", "email is longer than 254 characters"),
        ("phone", "+" + "1" * 100, "phone is longer than 64 characters"),
    ],
)
def test_a_value_too_long_is_refused_with_the_rule_of_its_type(
    identity_type: str, raw: str, rule: str
) -> None:
    assert refusal(identity_type, raw).startswith(rule)


def test_an_id_of_exactly_128_characters_is_accepted() -> None:
    assert parse_identity("user_id", "u" * 128).value == "u" * 128
