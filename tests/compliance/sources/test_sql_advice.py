"""`gdpr sources advise`: the indexes a SQL source lacks for requests, on SQLite and
PostgreSQL. The advised statements are run here to prove they are valid and that what
they create counts as usable; the command itself never creates an index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.sources.registry import Registry, load_registry
from compliance.sources.sql import advice
from compliance.sources.sql.advice import Advice, advise_sources, index_name
from tests.compliance.sources.sqlsample import PSEUDONYM_KEY
from tests.sample_app.fixtures import app_database

SCHEMA = """
CREATE TABLE {s}"Customers" (id integer PRIMARY KEY, "Email" varchar(254) NOT NULL,
  name text NOT NULL);
CREATE TABLE {s}"Orders" (id integer PRIMARY KEY,
  "CustomerId" integer NOT NULL REFERENCES {s}"Customers" (id), placed_at date NOT NULL);
CREATE TABLE {s}tickets (id integer PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES {s}"Customers" (id), body text NOT NULL);
CREATE INDEX tickets_by_customer ON {s}tickets (customer_id);
CREATE TABLE {s}wishlist (id integer PRIMARY KEY, "user" integer REFERENCES {s}"Customers" (id));
INSERT INTO {s}"Customers" VALUES (1, 'Ann@Example.com', 'Ann'), (2, 'ben@example.com', 'Ben'),
  (3, 'cy@example.com', 'Cy');
INSERT INTO {s}"Orders" VALUES (10, 1, '2025-01-02'), (11, 2, '2025-01-03');
"""

MANIFEST = """
[sources.app]
kind = "sql"
url = "{url}"
{schema}
[sources.app.tables.Customers]
identities = {{ Email = "email", id = "user_id" }}
[sources.app.tables.Orders]
[sources.app.tables.tickets]
"""


@dataclass(frozen=True)
class AppDb:
    backend: str
    url: str
    schema: str  # "" on SQLite

    def run(self, *statements: str) -> None:
        """Each statement on its own, outside a transaction (as CONCURRENTLY needs)."""
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    def indexes(self) -> set[tuple[str, str]]:
        """Every index of the database: (name, definition)."""
        sql = (
            "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'index'"
            if self.backend == "sqlite"
            else "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'Sales'"
        )
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return {(str(a), str(b)) for a, b in conn.execute(text(sql))}
        finally:
            engine.dispose()

    def table(self, name: str) -> str:
        return f"Sales.{name}" if self.schema else name

    def write_manifest(self, folder: Path, extra: str = "") -> Path:
        schema = f'schema = "{self.schema}"' if self.schema else ""
        path = folder / "sources.toml"
        path.write_text(MANIFEST.format(url=self.url, schema=schema) + extra, encoding="utf-8")
        return path


@pytest.fixture(params=["sqlite", "postgres"])
def app_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppDb]:
    """Customers, their orders (no index on the reference), tickets (indexed) and a
    wishlist outside the manifest; on PostgreSQL in the mixed-case schema "Sales"."""
    with app_database(request.param, tmp_path, "advice") as url:
        yield _build(request.param, url)


def _build(backend: str, url: str) -> AppDb:
    db = AppDb(backend, url, "Sales" if backend == "postgres" else "")
    prefix = '"Sales".' if db.schema else ""
    setup = ['CREATE SCHEMA "Sales"'] if db.schema else []
    db.run(*setup, *[s.strip() for s in SCHEMA.format(s=prefix).split(";") if s.strip()])
    return db


def _load(db: AppDb, folder: Path, extra: str = "") -> Registry:
    settings = Settings(home=folder / ".gdpr", sources=str(db.write_manifest(folder, extra)))
    return load_registry(settings, environ={}, pseudonym_key=PSEUDONYM_KEY)


def _advise(db: AppDb, folder: Path, extra: str = "") -> dict[tuple[str, str], Advice]:
    registry = _load(db, folder, extra)
    try:
        return {(a.table, a.key): a for a in advise_sources(registry.sources).advice}
    finally:
        registry.close()


def _invoke(settings: Settings, *args: str) -> tuple[int, str, str]:
    app = App()
    app._cache["settings"] = settings
    result = CliRunner().invoke(cli, list(args), obj=app)
    return result.exit_code, result.stdout, result.stderr


def test_unindexed_email_and_references_are_advised_with_correct_statements(
    app_db: AppDb, tmp_path: Path
) -> None:
    found = _advise(app_db, tmp_path)
    customers, orders, wishlist = (app_db.table(t) for t in ("Customers", "Orders", "wishlist"))
    assert set(found) == {
        (customers, "lower(Email)"),
        (orders, "CustomerId"),
        (wishlist, "user"),
    }  # not the primary key, not tickets.customer_id (indexed)
    if app_db.backend == "postgres":
        assert found[(customers, "lower(Email)")].statements == (
            'CREATE INDEX CONCURRENTLY ix_customers_email_lower ON "Sales"."Customers"'
            ' (lower("Email"));',
        )
        assert found[(orders, "CustomerId")].statements == (
            'CREATE INDEX CONCURRENTLY ix_orders_customerid ON "Sales"."Orders" ("CustomerId");',
        )
        assert found[(wishlist, "user")].statements == (
            'CREATE INDEX CONCURRENTLY ix_wishlist_user ON "Sales".wishlist ("user");',
        )
    else:
        assert found[(customers, "lower(Email)")].statements == (
            'CREATE INDEX ix_customers_email_lower ON "Customers" (lower("Email"));',
        )
        assert found[(orders, "CustomerId")].statements == (
            'CREATE INDEX ix_orders_customerid ON "Orders" ("CustomerId");',
        )
    assert found[(orders, "CustomerId")].why == (
        "reference Orders(CustomerId) -> Customers (owned): requests follow it to the"
        " subject's Orders rows",
    )
    assert "(wishlist is not in the manifest)" in found[(wishlist, "user")].why[0]


def test_after_the_advised_statements_run_nothing_is_left_to_advise(
    app_db: AppDb, tmp_path: Path
) -> None:
    first = _advise(app_db, tmp_path)
    app_db.run(*[s for a in first.values() for s in a.statements])
    assert _advise(app_db, tmp_path) == {}


def test_an_index_with_the_column_second_does_not_count(app_db: AppDb, tmp_path: Path) -> None:
    prefix = '"Sales".' if app_db.schema else ""
    app_db.run(
        f'CREATE INDEX orders_by_day ON {prefix}"Orders" (placed_at, "CustomerId")',
        f'CREATE INDEX customers_by_email ON {prefix}"Customers" ("Email")',
    )
    found = _advise(app_db, tmp_path)
    assert (app_db.table("Orders"), "CustomerId") in found
    advised = found[(app_db.table("Customers"), "lower(Email)")]
    assert advised.note == "index customers_by_email on Email cannot serve lower(Email)"

    app_db.run(f'CREATE INDEX orders_by_customer ON {prefix}"Orders" ("CustomerId", placed_at)')
    assert (app_db.table("Orders"), "CustomerId") not in _advise(app_db, tmp_path)


def test_a_partial_index_does_not_count(app_db: AppDb, tmp_path: Path) -> None:
    prefix = '"Sales".' if app_db.schema else ""
    app_db.run(f'CREATE INDEX recent ON {prefix}"Orders" ("CustomerId") WHERE id > 10')
    advised = _advise(app_db, tmp_path)[(app_db.table("Orders"), "CustomerId")]
    assert advised.note.startswith("index recent is partial")


def test_an_invalid_index_does_not_count_and_is_named_in_a_note(tmp_path: Path) -> None:
    with app_database("postgres", tmp_path, "advice_invalid") as url:
        db = _build("postgres", url)
        db.run("""INSERT INTO "Sales"."Orders" VALUES (12, 1, '2025-01-04')""")
        with pytest.raises(IntegrityError):  # a duplicate: the index is left invalid
            db.run('CREATE UNIQUE INDEX CONCURRENTLY one_each ON "Sales"."Orders" ("CustomerId")')
        advised = _advise(db, tmp_path)[("Sales.Orders", "CustomerId")]
        assert advised.note.startswith("index one_each is invalid")


def test_sizes_are_a_count_on_sqlite_and_the_planners_estimate_on_postgres(
    app_db: AppDb, tmp_path: Path
) -> None:
    customers = (app_db.table("Customers"), "lower(Email)")
    if app_db.backend == "sqlite":
        found = _advise(app_db, tmp_path)[customers]
        assert (found.rows, found.rows_estimated, found.size_bytes) == (3, False, None)
        return
    assert _advise(app_db, tmp_path)[customers].rows is None  # never analysed
    app_db.run('ANALYZE "Sales"."Customers"')
    found = _advise(app_db, tmp_path)[customers]
    assert (found.rows, found.rows_estimated) == (3, True)
    assert found.size_bytes is not None and found.size_bytes >= 8192
    assert "~3 rows, " in "\n".join(found.lines())


def test_a_partitioned_table_is_indexed_partition_by_partition(tmp_path: Path) -> None:
    with app_database("postgres", tmp_path, "advice_parts") as url:
        db = _build("postgres", url)
        db.run(
            'CREATE TABLE "Sales".visits (id integer NOT NULL, at date NOT NULL,'
            ' customer_id integer REFERENCES "Sales"."Customers" (id), PRIMARY KEY (id, at))'
            " PARTITION BY RANGE (at)",
            'CREATE TABLE "Sales".visits_2024 PARTITION OF "Sales".visits'
            " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
            'CREATE TABLE "Sales".visits_2025 PARTITION OF "Sales".visits'
            " FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        )
        extra = "[sources.app.tables.visits]\n"
        found = _advise(db, tmp_path, extra)
        visits = found[("Sales.visits", "customer_id")]
        assert not [key for key in found if key[0].startswith("Sales.visits_")]
        assert visits.statements == (
            'CREATE INDEX ix_visits_customer_id ON ONLY "Sales".visits (customer_id);',
            'CREATE INDEX CONCURRENTLY ix_visits_2024_customer_id ON "Sales".visits_2024'
            " (customer_id);",
            'CREATE INDEX CONCURRENTLY ix_visits_2025_customer_id ON "Sales".visits_2025'
            " (customer_id);",
            'ALTER INDEX "Sales".ix_visits_customer_id ATTACH PARTITION'
            ' "Sales".ix_visits_2025_customer_id;',
            'ALTER INDEX "Sales".ix_visits_customer_id ATTACH PARTITION'
            ' "Sales".ix_visits_2024_customer_id;',
        )
        db.run(*visits.statements)
        assert ("Sales.visits", "customer_id") not in _advise(db, tmp_path, extra)


def test_index_names_are_deterministic_and_fit_in_63_characters() -> None:
    long = "customer_interactions_archive_partitioned_by_month_and_region"
    a = index_name(long, ["preferred_contact_email"], lower=True)
    b = index_name(long, ["preferred_contact_phone"], lower=True)
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert a == index_name(long, ["preferred_contact_email"], lower=True)
    assert index_name("Orders", ["CustomerId"], lower=False) == "ix_orders_customerid"
    odd = index_name("order lines", ["a-b"], lower=False)
    assert odd.startswith("ix_order_lines_a_b_") and len(odd) == len("ix_order_lines_a_b_") + 8


def test_cli_prints_the_advice_and_never_creates_an_index(
    app_db: AppDb, sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings.with_overrides(sources=str(app_db.write_manifest(tmp_path)))
    before = app_db.indexes()
    code, out, _ = _invoke(settings, "sources", "advise")
    assert code == 0, out
    assert app_db.indexes() == before
    orders = app_db.table("Orders")
    assert f"app: {orders} (CustomerId)" in out
    assert "  why   reference Orders(CustomerId) -> Customers (owned)" in out
    assert "  size  " in out
    concurrently = "CONCURRENTLY " if app_db.backend == "postgres" else ""
    assert f"  CREATE INDEX {concurrently}ix_orders_customerid ON " in out

    code, out, _ = _invoke(settings, "sources", "advise", "--source", "app", "--json")
    assert code == 0, out
    assert app_db.indexes() == before
    rows = json.loads(out)
    assert {(r["table"], r["key"]) for r in rows} == {
        (app_db.table("Customers"), "lower(Email)"),
        (orders, "CustomerId"),
        (app_db.table("wishlist"), "user"),
    }
    assert set(rows[0]) == {
        "source", "table", "key", "why", "rows", "rows_estimated", "size_bytes",
        "statements", "note",
    }  # fmt: skip


def test_cli_says_so_when_every_column_has_a_usable_index(
    app_db: AppDb, sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings.with_overrides(sources=str(app_db.write_manifest(tmp_path)))
    code, out, _ = _invoke(settings, "sources", "advise", "--json")
    app_db.run(*[s for r in json.loads(out) for s in r["statements"]])
    code, out, _ = _invoke(settings, "sources", "advise")
    assert (code, out) == (0, f"{advice.NOTHING_TO_ADVISE}.\n")
    code, out, _ = _invoke(settings, "sources", "advise", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_cli_skips_a_source_that_is_not_sql_with_a_note(
    app_db: AppDb, sqlite_settings: Settings, tmp_path: Path, redis_url: str
) -> None:
    cache = (
        f'[sources.cache]\nkind = "redis"\nurl = "{redis_url}"\npatterns = ["cart:{{user_id}}"]\n'
    )
    manifest = app_db.write_manifest(tmp_path, cache)
    settings = sqlite_settings.with_overrides(sources=str(manifest))
    code, out, _ = _invoke(settings, "sources", "advise")
    assert code == 0
    assert out.startswith("note: source cache (redis) is not a SQL source: skipped\n")
    assert "app: " in out
    code, out, _ = _invoke(settings, "sources", "advise", "--source", "cache")
    assert (code, out) == (
        0,
        "note: source cache (redis) is not a SQL source: skipped\nNo SQL source to advise on.\n",
    )
    code, out, err = _invoke(settings, "sources", "advise", "--json")
    assert code == 0 and len(json.loads(out)) == 3
    assert "note: source cache (redis) is not a SQL source: skipped" in err
