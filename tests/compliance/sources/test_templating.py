"""Identity templates: parsing, expansion, escaping per target, and the spec helpers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compliance.config import Settings
from compliance.errors import ManifestError
from compliance.identities import Identities, Identity
from compliance.sources.base import Art15
from compliance.sources.templating import (
    art15,
    check_keys,
    escape_glob,
    escape_s3_segment,
    escape_url_segment,
    expand_env,
    is_glob,
    manifest_factory,
    parse_locations,
    parse_template,
)


def ids(*pairs: tuple[str, str]) -> Identities:
    return Identities.of(Identity(t, v) for t, v in pairs)


def keep(value: str) -> str | None:
    return value


def test_template_expands_once_per_value_of_its_identity_type() -> None:
    template = parse_template("session:{user_id}:*", "sources.cache.patterns[0]")
    subject = ids(("user_id", "2"), ("user_id", "1"), ("email", "a@example.com"))
    assert template.expand(subject, keep) == ["session:1:*", "session:2:*"]


def test_template_expands_the_product_of_several_identity_types() -> None:
    template = parse_template("{email}/{user_id}/", "w")
    subject = ids(("user_id", "1"), ("email", "a@x.org"), ("email", "b@x.org"))
    assert template.expand(subject, keep) == ["a@x.org/1/", "b@x.org/1/"]


def test_template_whose_identity_is_absent_expands_to_nothing() -> None:
    template = parse_template("avatars/{user_id}/", "w")
    assert template.expand(ids(("email", "a@example.com")), keep) == []


def test_template_naming_an_unknown_identity_type_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match=r"sources\.cache\.patterns\[0\].*unknown identity"):
        parse_template("cart:{userid}", "sources.cache.patterns[0]")


def test_template_accepts_custom_identity_types() -> None:
    template = parse_template("t/{custom:tenant}/", "w")
    assert template.expand(ids(("custom:tenant", "acme")), keep) == ["t/acme/"]


def test_template_without_any_identity_is_refused_because_it_matches_everyone() -> None:
    with pytest.raises(ManifestError, match="would match every subject"):
        parse_template("cart:*", "sources.cache.patterns[0]")


@pytest.mark.parametrize("text", ["cart:{user_id", "cart:user_id}", "{{user_id}}", ""])
def test_malformed_template_is_a_manifest_error(text: str) -> None:
    with pytest.raises(ManifestError, match=r"sources\.x\.patterns\[1\]"):
        parse_template(text, "sources.x.patterns[1]")


@pytest.mark.parametrize(
    ("value", "escaped"),
    [("*", r"\*"), ("a?b", r"a\?b"), ("[ab]", r"\[ab\]"), ("a\\b", r"a\\b"), ("42", "42")],
)
def test_glob_escaping_makes_special_characters_literal(value: str, escaped: str) -> None:
    assert escape_glob(value) == escaped
    assert not is_glob(escaped)


def test_is_glob_sees_unescaped_wildcards_only() -> None:
    assert is_glob("session:1:*")
    assert is_glob("a[bc]")
    assert not is_glob(r"session:\*")


@pytest.mark.parametrize("value", ["a/b", "..", "x..y", "", "a\\b"])
def test_s3_segment_refuses_values_that_could_leave_their_prefix(value: str) -> None:
    assert escape_s3_segment(value) is None


def test_s3_refused_value_makes_the_prefix_match_nothing() -> None:
    template = parse_template("avatars/{user_id}/", "w")
    assert template.expand(ids(("user_id", "../2")), escape_s3_segment) == []


def test_url_segment_is_percent_encoded_including_slashes() -> None:
    assert escape_url_segment("a/b c@x?.org") == "a%2Fb%20c%40x%3F.org"


def test_check_keys_names_the_unknown_key_and_the_known_ones() -> None:
    with pytest.raises(ManifestError, match=r"sources\.s\.buckett is not a known setting.*bucket"):
        check_keys({"buckett": "x"}, {"bucket"}, "sources.s")


def test_art15_items_override_the_source_level_key_by_key() -> None:
    base = art15({"purpose": "Profiles", "recipients": ["CDN"]}, "sources.s")
    item = art15({"retention": "30 days"}, "sources.s.prefixes[0]", base)
    assert item == Art15(purpose="Profiles", recipients=("CDN",), retention="30 days")


def test_art15_refuses_a_recipients_value_that_is_not_a_list() -> None:
    with pytest.raises(ManifestError, match=r"sources\.s\.recipients must be a list"):
        art15({"recipients": "CDN"}, "sources.s")


def test_locations_accept_strings_and_tables_with_their_own_metadata() -> None:
    spec = {"prefixes": ["a/{user_id}/", {"prefix": "b/{email}/", "purpose": "Invoices"}]}
    locations = parse_locations(spec, "prefixes", "prefix", "sources.s", Art15(purpose="Photos"))
    assert [(loc.template.text, loc.meta.purpose) for loc in locations] == [
        ("a/{user_id}/", "Photos"),
        ("b/{email}/", "Invoices"),
    ]


def test_locations_missing_is_a_manifest_error_with_an_example() -> None:
    with pytest.raises(ManifestError, match=r"sources\.s\.prefixes is missing.*prefixes = \["):
        parse_locations({}, "prefixes", "prefix", "sources.s", Art15())


def test_env_expansion_replaces_variables_and_names_an_unset_one() -> None:
    assert expand_env({"a": ["x-${T}"]}, {"T": "1"}, "w") == {"a": ["x-1"]}
    with pytest.raises(ManifestError, match=r"sources\.crm\.auth_secret uses \$\{NOPE\}"):
        expand_env("${NOPE}", {}, "sources.crm.auth_secret")


def test_manifest_factory_passes_the_spec_without_kind_and_marks_keys_read() -> None:
    seen: dict[str, object] = {}

    def build(name: str, spec: dict[str, object], settings: Settings) -> str:
        seen.update(spec)
        return name

    read: list[str] = []
    spec = SimpleNamespace(
        data={"kind": "x", "url": "${U}"}, raw=lambda k: read.append(k) or {"url": "${U}"}[k]
    )
    ctx = SimpleNamespace(environ={"U": "redis://h"}, settings=Settings())
    assert manifest_factory(build)("n", spec, ctx) == "n"
    assert seen == {"url": "redis://h"}
    assert read == ["url"]
