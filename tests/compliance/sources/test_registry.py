"""Loading the sources manifest: every mistake is a clear error naming its entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from compliance.config import Settings
from compliance.errors import ManifestError
from compliance.sources.manifest import Spec
from compliance.sources.registry import LoadContext, load_registry
from tests.compliance.helpers import FakeSource
from tests.sample_app import schema

KEY = b"k" * 32


@pytest.fixture
def shop_url(tmp_path: Path) -> str:
    """The sample shop on SQLite (validation does not depend on the dialect)."""
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    crm = f"sqlite:///{tmp_path / 'crm.db'}"
    shop_engine, crm_engine = create_engine(url), create_engine(crm)
    schema.create(shop_engine, crm_engine)
    shop_engine.dispose()
    crm_engine.dispose()
    return url


def load(tmp_path: Path, text: str, **kwargs: Any) -> Any:
    path = tmp_path / "sources.toml"
    path.write_text(text, encoding="utf-8")
    settings = Settings(home=tmp_path / ".gdpr", sources=str(path))
    return load_registry(settings, environ=kwargs.pop("environ", {}), pseudonym_key=KEY, **kwargs)


def sql(url: str, tables: str, head: str = "") -> str:
    return f'[sources.shop]\nkind = "sql"\nurl = "{url}"\n{head}\n{tables}'


def test_no_manifest_is_an_empty_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    registry = load_registry(Settings(home=tmp_path), environ={}, pseudonym_key=KEY)
    assert list(registry) == []


def test_the_sample_manifest_loads_both_databases(tmp_path: Path, shop_url: str) -> None:
    crm = shop_url.replace("shop.db", "crm.db")
    registry = load(tmp_path, schema.manifest(shop_url, crm))
    try:
        assert [(s.name, s.kind) for s in registry] == [("shop", "sql"), ("crm", "sql")]
        assert registry.get("crm").name == "crm"
        with pytest.raises(ManifestError, match="no source named 'nope'"):
            registry.get("nope")
    finally:
        registry.close()


def test_a_relative_sqlite_path_resolves_against_the_manifest_folder(
    tmp_path: Path, shop_url: str
) -> None:
    registry = load(tmp_path, sql("sqlite:///shop.db", "[sources.shop.tables.sessions]"))
    registry.close()


def test_the_url_may_come_from_the_environment(tmp_path: Path, shop_url: str) -> None:
    text = sql("${SHOP_URL}", "[sources.shop.tables.sessions]")
    load(tmp_path, text, environ={"SHOP_URL": shop_url}).close()
    with pytest.raises(ManifestError, match=r"sources\.shop\.url uses \$\{SHOP_URL\}"):
        load(tmp_path, text)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("[sources.shop.tables.userz]", r"sources\.shop\.tables\.userz: no table 'userz'"),
        (
            "[sources.shop.tables.users]\nidentities = { mail = 'email' }",
            r"sources\.shop\.tables\.users\.identities: table 'users' has no column 'mail'",
        ),
        (
            "[sources.shop.tables.users]\nidentities = { email = 'e-mail' }",
            r"identities: column 'email': unknown identity type 'e-mail'",
        ),
        (
            "[sources.shop.tables.users]\non_delete = 'delete'",
            r"sources\.shop\.tables\.users: unknown key 'on_delete'",
        ),
        (
            "[sources.shop.tables.users]\non_erase = 'shred'",
            r"'on_erase' must be one of delete, anonymize, retain",
        ),
        (
            "[sources.shop.tables.invoices]\non_erase = 'retain'",
            r"sources\.shop\.tables\.invoices: on_erase = 'retain' needs a legal_basis",
        ),
        (
            "[sources.shop.tables.payments]\non_erase = 'anonymize'\nanonymize = { iban = 'null' }",
            r"tables\.payments\.anonymize\.iban: table 'payments' has no column 'iban'",
        ),
        (
            "[sources.shop.tables.payments]\non_erase = 'anonymize'\n"
            "anonymize = { amount = 'redact' }",
            r"anonymize\.amount: column is NOT NULL and not text, so it cannot be anonymised",
        ),
        (
            "[sources.shop.tables.payments]\non_erase = 'anonymize'\n"
            "anonymize = { billing_name = 'null' }",
            r"anonymize\.billing_name: column is NOT NULL",
        ),
        (
            "[sources.shop.tables.payments]\non_erase = 'anonymize'\n"
            "anonymize = { card_last4 = 'hmac' }",
            r"'hmac' needs room for 32 characters",
        ),
        (
            "[sources.shop.tables.payments]\non_erase = 'anonymize'",
            r"on_erase = 'anonymize' needs an anonymize table",
        ),
        (
            "[sources.shop.tables.newsletter]\n"
            "references = [{ columns = 'user_ref', table = 'accounts' }]",
            r"references\[1\]: references table 'accounts', which does not exist",
        ),
        (
            "[sources.shop.tables.newsletter]\n"
            "references = [{ columns = 'user_ref', table = 'products' }]",
            r"table 'products' is not in the manifest; register it, or declare",
        ),
        (
            "[sources.shop.tables.newsletter]\n"
            "references = [{ columns = 'user_ref', table = 'users', kind = 'weak' }]",
            r"'kind' must be one of owned, shared, link",
        ),
        (
            "[sources.shop.tables.users]\nidentities = { id = 'user_id' }\n"
            "[sources.shop.tables.sessions]\non_erase = 'retain'\nlegal_basis = 'x'",
            r"sessions\(user_id\) -> users is NOT NULL and its rows stay \(on_erase = 'retain'\)"
            r".*on_parent_erase = 'placeholder'",
        ),
    ],
)
def test_manifest_mistakes_are_clear_errors(
    tmp_path: Path, shop_url: str, tables: str, message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        load(tmp_path, sql(shop_url, tables))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sources.shop]\nkind = "mongo"', r"sources\.shop: unknown kind 'mongo'; known kinds:"),
        ("[sources.shop]\nurl = 'x'", r"sources\.shop: missing required key 'kind'"),
        ('[sources.Shop]\nkind = "sql"', r"a source name is 1-64 lowercase letters"),
        ('[source.shop]\nkind = "sql"', r"unknown top-level key 'source'"),
        ('[sources.shop]\nkind = "sql"\n[sources.shop]\nkind = "sql"', r"sources\.toml: "),
        ('[sources.shop]\nkind = "sql"\nurl = "sqlite:///x.db"', r"needs at least one table"),
    ],
)
def test_source_level_mistakes_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load(tmp_path, text)


def test_an_unknown_key_of_the_source_is_refused(tmp_path: Path, shop_url: str) -> None:
    text = sql(shop_url, "[sources.shop.tables.sessions]", head="timeout = 3")
    with pytest.raises(ManifestError, match=r"sources\.shop: unknown key 'timeout'"):
        load(tmp_path, text)


def fake_factory(name: str, spec: Spec, ctx: LoadContext) -> FakeSource:
    return FakeSource(name, spec.string("label", required=True))


def test_custom_kinds_plug_in_and_their_keys_are_checked(tmp_path: Path) -> None:
    registry = load(
        tmp_path, '[sources.crm]\nkind = "fake"\nlabel = "x"', kinds={"fake": fake_factory}
    )
    assert [s.name for s in registry] == ["crm"]
    with pytest.raises(ManifestError, match=r"sources\.crm: unknown key 'lable'"):
        load(
            tmp_path,
            '[sources.crm]\nkind = "fake"\nlabel = "x"\nlable = "y"',
            kinds={"fake": fake_factory},
        )


def test_a_custom_kind_may_not_replace_a_built_in_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="kind 'sql' is registered twice"):
        load(tmp_path, '[sources.x]\nkind = "sql"', kinds={"sql": fake_factory})


def test_sources_loaded_before_an_error_are_closed(tmp_path: Path) -> None:
    opened: list[FakeSource] = []

    def factory(name: str, spec: Spec, ctx: LoadContext) -> FakeSource:
        opened.append(FakeSource(name, spec.string("label")))
        return opened[-1]

    text = '[sources.a]\nkind = "fake"\n[sources.b]\nkind = "nope"'
    with pytest.raises(ManifestError, match="unknown kind 'nope'"):
        load(tmp_path, text, kinds={"fake": factory})
    assert [s.closed for s in opened] == [True]


def test_a_sql_source_answers_the_types_of_its_identity_columns_only(
    tmp_path: Path, shop_url: str
) -> None:
    tables = (
        "[sources.shop.tables.users]\nidentities = { email = 'email', id = 'user_id' }\n"
        "[sources.shop.tables.sessions]\n"
    )
    registry = load(tmp_path, sql(shop_url, tables), connect=False)
    try:
        assert registry.get("shop").identity_types() == {"email", "user_id"}
    finally:
        registry.close()


def test_every_manifest_mistake_is_reported_at_once_in_manifest_order(tmp_path: Path) -> None:
    opened: list[FakeSource] = []

    def factory(name: str, spec: Spec, ctx: LoadContext) -> FakeSource:
        opened.append(FakeSource(name, spec.string("label")))
        return opened[-1]

    text = (
        'extra = 1\n[sources.a]\nkind = "nope"\n[sources.b]\nkind = "fake"\n'
        '[sources.c]\nurl = "x"\n[sources.d]\nkind = "fake"\nlable = "typo"\n'
    )
    messages = []
    for _ in range(2):
        with pytest.raises(ManifestError) as caught:
            load(tmp_path, text, kinds={"fake": factory})
        messages.append(str(caught.value))
        assert [p.split(":")[0] for p in caught.value.problems] == [
            "unknown top-level key 'extra' in the sources manifest",
            "sources.a",
            "sources.c",
            "sources.d",
        ]
    assert messages[0] == messages[1]
    assert messages[0].startswith("4 problems in the sources manifest: unknown top-level key")
    assert " | sources.a: unknown kind 'nope'" in messages[0]
    assert " | sources.d: unknown key 'lable'" in messages[0]
    assert "\n" not in messages[0]
    assert [(s.name, s.closed) for s in opened] == [("b", True), ("d", True)] * 2


def test_an_unreachable_source_does_not_hide_the_manifest_mistakes_of_others(
    tmp_path: Path,
) -> None:
    from compliance.errors import SourceUnavailableError

    opened: list[FakeSource] = []

    def factory(name: str, spec: Spec, ctx: LoadContext) -> FakeSource:
        if spec.string("label") == "down":
            raise SourceUnavailableError(f"sources.{name}: cannot connect; retry later")
        opened.append(FakeSource(name))
        return opened[-1]

    sound = '[sources.a]\nkind = "fake"\n[sources.b]\nkind = "fake"\nlabel = "down"\n'
    with pytest.raises(ManifestError, match=r"^sources\.c: unknown kind 'nope'"):
        load(tmp_path, sound + '[sources.c]\nkind = "nope"', kinds={"fake": factory})
    with pytest.raises(SourceUnavailableError, match=r"sources\.b: cannot connect"):
        load(tmp_path, sound, kinds={"fake": factory})
    assert [s.closed for s in opened] == [True, True]
