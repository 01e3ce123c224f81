"""The shop schema of bench/requests_at_scale.py, generated small on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench import scale_schema as shop
from compliance.config import Settings
from compliance.identities import Identities, parse_identity
from compliance.sources.base import RowsItem
from compliance.sources.registry import load_registry
from tests.support.services import pg_database

pytestmark = pytest.mark.postgres

CUSTOMERS = 5


@pytest.fixture
def shop_db() -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    with pg_database("scale_shop") as url:
        libpq = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(libpq, autocommit=True) as conn:
            shop.create(conn, CUSTOMERS)
            yield url, conn


def test_the_generator_builds_the_rows_of_the_issue_per_customer(
    shop_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    _, conn = shop_db
    assert shop.row_counts(conn) == {
        "products": 1000,
        "customers": 5,
        "addresses": 5,
        "cards": 10,
        "orders": 15,
        "order_items": 30,
        "logins": 25,
        "visits": 10,
        "support_requests": 5,
    }


def test_a_range_generated_later_adds_whole_customers_without_clashing_ids(
    shop_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    _, conn = shop_db
    shop.fill(conn, CUSTOMERS + 1, CUSTOMERS + 2)
    assert shop.row_counts(conn) == shop.expected_counts(CUSTOMERS + 2)
    found = conn.execute("SELECT count(*) FROM orders WHERE customer_id = 7").fetchone()
    assert found == (3,)


def test_only_primary_keys_are_indexed_until_the_advised_indexes_are_created(
    shop_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    _, conn = shop_db
    query = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"
    assert conn.execute(query).fetchone() == (9,)  # one primary key per table
    assert shop.create_indexes(conn, shop.INDEXES) == len(shop.INDEXES)
    assert conn.execute(query).fetchone() == (9 + len(shop.INDEXES),)


def test_the_export_floor_reads_every_row_of_one_customer(
    shop_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    _, conn = shop_db
    floor = shop.export_floor(conn, "customer2@EXAMPLE.com")
    assert floor == shop.Floor(rows=sum(shop.PER_CUSTOMER.values()), statements=8)


def test_the_erasure_floor_deletes_one_customer_and_nobody_else(
    shop_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    _, conn = shop_db
    floor = shop.erase_floor(conn, shop.email_of(3))
    assert floor.rows == sum(shop.PER_CUSTOMER.values())
    left = shop.row_counts(conn)
    assert left == {**shop.expected_counts(CUSTOMERS - 1), "products": 1000}
    assert conn.execute("SELECT count(*) FROM logins WHERE customer_id = 3").fetchone() == (0,)
    assert shop.export_floor(conn, shop.email_of(4)).rows == sum(shop.PER_CUSTOMER.values())


def test_the_manifest_finds_what_the_floor_reads(
    shop_db: tuple[str, psycopg.Connection[Any]], tmp_path: Path
) -> None:
    url, _ = shop_db
    manifest = tmp_path / "sources.toml"
    manifest.write_text(shop.manifest(url), encoding="utf-8")
    settings = Settings(home=tmp_path / ".gdpr", sources=str(manifest))
    registry = load_registry(settings, environ={}, pseudonym_key=b"k" * 32)
    try:
        (source,) = registry.sources
        subject = source.resolve(Identities.of([parse_identity("email", shop.email_of(2))]))
        found = {
            item.collection: len(list(item.rows))
            for item in source.export(subject)
            if isinstance(item, RowsItem)
        }
    finally:
        registry.close()
    assert found == shop.PER_CUSTOMER
