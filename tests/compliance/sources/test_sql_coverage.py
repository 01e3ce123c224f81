"""`gdpr sources check` on SQL sources: tables no manifest entry covers, in every schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine, event
from sqlalchemy import text as sql

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.errors import ManifestError
from compliance.sources.check import Gap, Kind, find_gaps, personal_columns
from compliance.sources.sql.source import SqlSource
from tests.compliance.sources.sqlsample import load
from tests.sample_app.fixtures import SampleDatabases, sample_databases


def run(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sql(statement))
    finally:
        engine.dispose()


def check(dbs: SampleDatabases, folder: Path, extra: str = "", manifest: str = "") -> list[Gap]:
    """The shop's gaps with the sample manifest (plus `extra`, or `manifest` instead)."""
    registry = load(dbs, folder, extra, manifest)
    try:
        return [g for g in find_gaps(registry.sources) if g.source == "shop"]
    finally:
        registry.close()


def with_shop_keys(dbs: SampleDatabases, keys: str) -> str:
    """The sample manifest with `keys` added to the shop source's own table."""
    anchor = 'ignore_tables = ["products"]'
    return dbs.manifest().replace(anchor, f"{anchor}\n{keys}", 1)


def by_location(gaps: list[Gap]) -> dict[str, Gap]:
    return {g.location: g for g in gaps}


BACKUP = (
    "CREATE SCHEMA backup",
    "CREATE TABLE backup.users AS SELECT * FROM public.users",
    "CREATE TABLE backup.orders AS SELECT * FROM public.orders",
)


# --- what a gap is ------------------------------------------------------------------------


def test_sources_check_reports_unregistered_tables_with_personal_data(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    run(
        sample_dbs.shop_url,
        "CREATE TABLE marketing_leads (id INTEGER PRIMARY KEY,"
        " user_id INTEGER REFERENCES users(id), score INTEGER)",
        "CREATE TABLE shipping_labels (id INTEGER PRIMARY KEY, fullName TEXT)",
        "CREATE TABLE warehouses (id INTEGER PRIMARY KEY, capacity INTEGER)",
    )
    gaps = by_location(check(sample_dbs, tmp_path))
    assert set(gaps) == {"marketing_leads", "shipping_labels"}
    lead = gaps["marketing_leads"]
    assert "references users (subject data)" in lead.reason
    assert lead.columns == ("user_id",)
    assert [c.lower() for c in gaps["shipping_labels"].columns] == ["fullname"]  # PostgreSQL folds


def test_a_table_with_several_reasons_is_one_gap_naming_them_all(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    run(
        sample_dbs.shop_url,
        "CREATE TABLE wishlist (id INTEGER PRIMARY KEY,"
        " user_id INTEGER REFERENCES users(id), owner_email TEXT)",
    )
    [gap] = check(sample_dbs, tmp_path)
    assert gap.location == "wishlist"
    assert gap.reason == (
        "references users (subject data); columns that look personal: owner_email;"
        " not in the manifest"
    )
    assert gap.columns == ("user_id", "owner_email")


def test_card_and_bank_columns_are_reported_as_card_data(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    run(
        sample_dbs.shop_url,
        "CREATE TABLE stored_cards (id INTEGER PRIMARY KEY, card_number TEXT, code TEXT)",
        "CREATE TABLE legacy_cards (id INTEGER PRIMARY KEY, ccn TEXT, cvv TEXT)",
        "CREATE TABLE payouts (id INTEGER PRIMARY KEY, iban TEXT, amount INTEGER)",
        "CREATE TABLE vouchers (id INTEGER PRIMARY KEY, code TEXT, percent INTEGER)",
    )
    gaps = by_location(check(sample_dbs, tmp_path))
    assert set(gaps) == {"stored_cards", "legacy_cards", "payouts"}  # a voucher code is not
    assert "card or bank data: card_number, code;" in gaps["stored_cards"].reason
    assert "card or bank data: ccn, cvv;" in gaps["legacy_cards"].reason
    assert gaps["payouts"].columns == ("iban",)


def test_passwords_and_binary_pictures_are_reported(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    meta = MetaData()
    Table(
        "legacy_logins",
        meta,
        Column("id", Integer, primary_key=True),
        Column("password", String(200)),
    )
    Table("badges", meta, Column("id", Integer, primary_key=True), Column("picture", LargeBinary))
    engine = create_engine(sample_dbs.shop_url)
    meta.create_all(engine)
    engine.dispose()
    gaps = by_location(check(sample_dbs, tmp_path))
    assert set(gaps) == {"legacy_logins", "badges"}
    assert "credentials: password;" in gaps["legacy_logins"].reason
    assert "images of people: picture;" in gaps["badges"].reason


def test_column_names_are_split_into_words_without_silly_matches() -> None:
    columns = ["zipcode", "country_code", "creditCardNumber", "userPassword", "api_key"]
    columns += ["profilePhotos", "span", "company", "card_last4"]
    assert personal_columns(columns) == (
        ("zipcode", Kind.PERSONAL),
        ("creditCardNumber", Kind.PAYMENT),
        ("userPassword", Kind.CREDENTIAL),
        ("api_key", Kind.CREDENTIAL),
        ("profilePhotos", Kind.IMAGE),
    )
    assert personal_columns(["id", "code"]) == ()


# --- every schema ---------------------------------------------------------------------------


def test_a_full_copy_in_a_backup_schema_is_reported_schema_qualified_as_a_copy(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    run(pg_sample_dbs.shop_url, *BACKUP)
    gaps = by_location(check(pg_sample_dbs, tmp_path))
    assert set(gaps) == {"backup.users", "backup.orders"}
    assert "copies the registered table users (same columns)" in gaps["backup.users"].reason
    assert gaps["backup.orders"].reason == (
        "copies the registered table orders (same columns);"
        " columns that look personal: shipping_address_id; not in the manifest"
    )


def test_check_schemas_limits_the_check_to_the_schemas_it_names(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    run(
        pg_sample_dbs.shop_url,
        *BACKUP,
        "CREATE TABLE wishlist (id INTEGER PRIMARY KEY, owner_email TEXT)",
    )
    manifest = with_shop_keys(pg_sample_dbs, 'check_schemas = ["backup"]')
    gaps = check(pg_sample_dbs, tmp_path, manifest=manifest)
    assert {g.location for g in gaps} == {"backup.users", "backup.orders"}


def test_check_exclude_schemas_skips_the_schemas_it_names(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    run(
        pg_sample_dbs.shop_url,
        *BACKUP,
        "CREATE TABLE wishlist (id INTEGER PRIMARY KEY, owner_email TEXT)",
    )
    manifest = with_shop_keys(pg_sample_dbs, 'check_exclude_schemas = ["backup"]')
    gaps = check(pg_sample_dbs, tmp_path, manifest=manifest)
    assert [g.location for g in gaps] == ["wishlist"]


def test_an_unknown_schema_in_check_schemas_is_a_one_line_error_naming_the_entry(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    manifest = with_shop_keys(sample_dbs, 'check_schemas = ["bakup"]')
    with pytest.raises(ManifestError) as caught:
        check(sample_dbs, tmp_path, manifest=manifest)
    assert str(caught.value) == (
        "sources.shop.check_schemas: schema 'bakup' does not exist in the database"
    )


def test_a_schema_both_checked_and_excluded_is_refused_when_the_manifest_loads(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    keys = 'check_schemas = ["main"]\ncheck_exclude_schemas = ["main"]'
    with pytest.raises(ManifestError, match="both in check_schemas and check_exclude_schemas"):
        load(sample_dbs, tmp_path, manifest=with_shop_keys(sample_dbs, keys))


def test_an_attached_sqlite_database_is_checked_too(tmp_path: Path) -> None:
    with sample_databases("sqlite", tmp_path) as dbs:
        archive = tmp_path / "archive.db"
        run(f"sqlite:///{archive}", "CREATE TABLE old_users (id INTEGER, email TEXT)")
        registry = load(dbs, tmp_path)
        try:
            shop = registry.get("shop")
            assert isinstance(shop, SqlSource)
            shop.engine.dispose()  # new connections attach the archive

            def attach(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute(f"ATTACH DATABASE '{archive}' AS archive")

            event.listen(shop.engine, "connect", attach)
            gaps = shop.gaps()
        finally:
            registry.close()
    assert [(g.location, g.columns) for g in gaps] == [("archive.old_users", ("email",))]


# --- partitions (PostgreSQL) ----------------------------------------------------------------


def partitioned_events(url: str, fk_on_parent: bool) -> None:
    """`events`, partitioned by month, May and June 2025 (with or without its own FK)."""
    fk = " REFERENCES users(id)" if fk_on_parent else ""
    run(
        url,
        f"CREATE TABLE events (id INTEGER, user_id INTEGER{fk}, at DATE NOT NULL,"
        " kind TEXT, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
        "CREATE TABLE events_2025_05 PARTITION OF events"
        " FOR VALUES FROM ('2025-05-01') TO ('2025-06-01')",
        "CREATE TABLE events_2025_06 PARTITION OF events"
        " FOR VALUES FROM ('2025-06-01') TO ('2025-07-01')",
    )


def test_a_partitioned_table_is_reported_once_and_its_partitions_never(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    partitioned_events(pg_sample_dbs.shop_url, fk_on_parent=True)
    [gap] = check(pg_sample_dbs, tmp_path)
    assert gap.location == "events"
    assert gap.reason == "references users (subject data); not in the manifest"
    assert gap.columns == ("user_id",)


def test_a_foreign_key_declared_on_one_partition_counts_for_its_parent(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    partitioned_events(pg_sample_dbs.shop_url, fk_on_parent=False)
    run(
        pg_sample_dbs.shop_url,
        "ALTER TABLE events_2025_05 ADD FOREIGN KEY (user_id) REFERENCES users(id)",
    )
    gaps = check(pg_sample_dbs, tmp_path)
    assert [(g.location, g.columns) for g in gaps] == [("events", ("user_id",))]


def test_a_registered_partitioned_table_covers_every_partition_even_one_without_the_fk(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    partitioned_events(pg_sample_dbs.shop_url, fk_on_parent=False)
    run(
        pg_sample_dbs.shop_url,
        "ALTER TABLE events_2025_05 ADD FOREIGN KEY (user_id) REFERENCES users(id)",
    )
    extra = (
        "\n[sources.shop.tables.events]\n"
        'references = [{ columns = "user_id", table = "users", kind = "owned" }]\n'
    )
    assert check(pg_sample_dbs, tmp_path, extra) == []


# --- the command ----------------------------------------------------------------------------


def invoke(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), obj=_app(settings))
    return result.exit_code, result.stdout


def _app(settings: Settings) -> App:
    app = App()
    app._cache["settings"] = settings
    return app


def test_sources_check_prints_one_line_per_gap_with_names_only_and_exits_1(
    sqlite_settings: Settings, pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    settings = sqlite_settings.with_overrides(sources=str(pg_sample_dbs.write_manifest(tmp_path)))
    assert invoke(settings, "sources", "check") == (0, "No unregistered personal data found.\n")
    run(pg_sample_dbs.shop_url, *BACKUP)
    code, out = invoke(settings, "sources", "check")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("  shop: backup.orders: copies the registered table orders")
    assert lines[2].startswith("  shop: backup.users: copies the registered table users")
    assert "Ada@Example.com" not in out and "Lovelace" not in out  # names, never values
    code, out = invoke(settings, "sources", "check", "--json")
    assert code == 1
    assert [g["location"] for g in json.loads(out)] == ["backup.orders", "backup.users"]
