"""The package's index.html: the subject's data in readable tables under the manifest's
titles, the Art. 15 facts the manifest knows (and only those), every value escaped."""

from __future__ import annotations

import html
import io
import re
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance.config import Settings
from compliance.db import Database
from compliance.execution import RunContext
from compliance.keyring import load_keyring
from compliance.models import RequestKind
from compliance.sources.base import Art15, ExportItem, FileItem, RowsItem
from exporters.crypto import decrypt_stream, wrapper_for
from exporters.job import package_key, run_export
from exporters.package import write_package
from exporters.preview import PAGE_CHARS, PREVIEW_ROWS
from exporters.storage import open_storage
from exporters.tables import TableEncoder
from tests.compliance.helpers import NOW, ada, submit_request
from tests.compliance.sources.sqlsample import load
from tests.sample_app.fixtures import SampleDatabases, sample_databases

REQUEST = uuid.UUID("00000000-0000-4000-8000-000000000002")
HOSTILE = '<script>alert("ada")</script>'


def page_of(items: list[ExportItem]) -> tuple[zipfile.ZipFile, str]:
    blob = b"".join(write_package(items, request_id=REQUEST, generated_at=NOW))
    package = zipfile.ZipFile(io.BytesIO(blob))
    return package, package.read("index.html").decode()


def items_by_title(page: str) -> dict[str, str]:
    """Each `<section class="item">` of the page by its (unescaped) title."""
    found = {}
    for part in page.split('<section class="item">')[1:]:
        match = re.search(r"<h3>(.*?)</h3>", part)
        assert match is not None
        found[html.unescape(match.group(1))] = part.split("</section>")[0]
    return found


def orders(count: int) -> list[dict[str, Any]]:
    return [{"id": n, "item": f"order number {n}"} for n in range(1, count + 1)]


# --- the page, from items -------------------------------------------------------------------


def test_a_table_shows_its_first_rows_and_links_the_files_for_the_rest() -> None:
    _, page = page_of([RowsItem("shop", "orders", iter(orders(PREVIEW_ROWS + 30)))])
    orders_item = items_by_title(page)["Orders"]
    assert "<td>order number 1</td>" in orders_item
    assert f"<td>order number {PREVIEW_ROWS}</td>" in orders_item
    assert f"order number {PREVIEW_ROWS + 1}<" not in orders_item
    assert f"the first {PREVIEW_ROWS} of {PREVIEW_ROWS + 30} records" in orders_item
    assert 'the full table is in <a href="data/shop/orders.csv">' in orders_item


def test_a_table_that_fits_shows_every_row_without_a_note() -> None:
    _, page = page_of([RowsItem("shop", "orders", iter(orders(3)))])
    orders_item = items_by_title(page)["Orders"]
    assert orders_item.count("<tr><td>") == 3
    assert "the full table is in" not in orders_item
    assert '<th scope="col" title="item">Item</th>' in orders_item


def test_the_json_and_csv_files_are_byte_for_byte_what_they_were_without_the_preview() -> None:
    rows = [*orders(PREVIEW_ROWS + 5), {"id": 99, "late_column": "x" * 500, "at": NOW}]
    package, _ = page_of([RowsItem("shop", "orders", iter(rows))])
    table = TableEncoder()
    json_bytes = b"".join(table.json_pieces(iter(rows)))
    csv_bytes = b"".join(table.csv_pieces())
    table.close()
    assert package.read("data/shop/orders.json") == json_bytes
    assert package.read("data/shop/orders.csv") == csv_bytes


def test_values_and_column_names_are_escaped() -> None:
    rows = [{"bio": HOSTILE, "<img src=x onerror=alert(1)>": "<b>bold</b>"}]
    _, page = page_of([RowsItem("shop", "profiles", iter(rows))])
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&#34;ada&#34;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


def test_a_long_value_is_shortened_on_the_page_and_the_page_says_so() -> None:
    rows = [{"id": 1, "bio": "long " * 100}]
    package, page = page_of([RowsItem("shop", "profiles", iter(rows))])
    assert "long " * 100 not in page
    assert "Long values are shortened here" in page
    assert b"long " * 100 in package.read("data/shop/profiles.json")


def test_titles_are_descriptions_or_readable_names() -> None:
    address = Art15(description="Addresses you gave us")
    items: list[ExportItem] = [
        RowsItem("shop", "order_items", iter([{"id": 1}])),
        RowsItem("shop", "addresses", iter([{"id": 11}]), address),
        RowsItem("shop", "addresses.shared", iter([{"id": 10}]), shared=True),
        RowsItem("cache", "cart:{user_id}", iter([{"sku": "A1"}])),
    ]
    _, page = page_of(items)
    assert set(items_by_title(page)) == {
        "Order items",
        "Addresses you gave us",
        "Addresses (shared with others)",
        "Cart",
    }


def test_only_the_facts_the_manifest_knows_are_shown() -> None:
    known = Art15(purpose="Support", origin="Your bank")
    nobody = Art15(recipients=())
    items: list[ExportItem] = [
        RowsItem("crm", "tickets", iter([{"id": 1}]), known),
        RowsItem("crm", "notes", iter([{"id": 1}]), nobody),
        FileItem("uploads", "a.png", lambda: iter([b"png"]), 3, Art15(retention="30 days")),
    ]
    _, page = page_of(items)
    found = items_by_title(page)
    assert "<dt>Why we hold it</dt><dd>Support</dd>" in found["Tickets"]
    assert "<dt>Where it came from</dt><dd>Your bank</dd>" in found["Tickets"]
    for absent in ("Legal basis", "Who receives it", "How long we keep it"):
        assert absent not in found["Tickets"]
    assert "<dd>Nobody outside our organisation</dd>" in found["Notes"]
    assert "Why we hold it" not in found["Notes"]
    assert "<dd>30 days</dd>" in found["Files you gave us or we made about you"]
    assert "Not specified" not in page


def test_the_whole_page_stays_within_its_budget_however_much_there_is() -> None:
    wide = {f"column_{n}": "v" * 150 for n in range(10)}
    tables = [RowsItem("shop", f"table_{n}", iter([wide] * PREVIEW_ROWS)) for n in range(30)]
    _, page = page_of(tables)
    shown = html.unescape(page).count("v" * 150)
    assert shown * 150 <= PAGE_CHARS
    assert "too many to show on this page: all 50 are in" in items_by_title(page)["Table 29"]
    assert len(page) < 2 * PAGE_CHARS


def test_memory_stays_bounded_for_a_page_of_many_tiny_values() -> None:
    def rows() -> Iterator[dict[str, str]]:  # 300,000 values of two characters each
        for row in range(PREVIEW_ROWS):
            yield {f"c{column}": f"{column % 10}{row % 10}" for column in range(100)}

    items = (RowsItem("shop", f"table_{n}", rows()) for n in range(60))
    tracemalloc.start()
    for _ in write_package(items, request_id=REQUEST, generated_at=NOW):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * (1 << 20), f"peak {peak / 2**20:.1f} MiB"


# --- a real export of the sample application ---------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[SampleDatabases]:
    """The sample shop and CRM on PostgreSQL; Ada's bio is hostile markup."""
    with sample_databases("postgres", tmp_path) as dbs:
        engine = create_engine(dbs.shop_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE profiles SET bio = :bio WHERE user_id = 1"), {"bio": HOSTILE})
        engine.dispose()
        yield dbs


def sample_manifest(dbs: SampleDatabases) -> str:
    """The sample manifest with a retention policy on sessions."""
    header = "[sources.shop.tables.sessions]\n"
    manifest = dbs.manifest()
    assert header in manifest
    return manifest.replace(header, header + 'retention = { column = "created_at", days = 30 }\n')


def exported_page(db: Database, settings: Settings, dbs: SampleDatabases, folder: Path) -> str:
    registry = load(dbs, folder, manifest=sample_manifest(dbs))
    try:
        request = submit_request(db, settings, RequestKind.EXPORT)
        ctx = RunContext(
            settings=settings,
            db=db,
            keyring=load_keyring(settings),
            sources=registry.sources,
            request_id=request.id,
            subject=request.subject,
            identities=ada(),
            clock=lambda: datetime(2026, 2, 1, tzinfo=UTC),
        )
        run_export(ctx)
    finally:
        registry.close()
    blob = open_storage(settings).download(package_key(ctx.request_id))
    plain = b"".join(decrypt_stream(blob, wrapper_for(settings, ctx.keyring)))
    return zipfile.ZipFile(io.BytesIO(plain)).read("index.html").decode()


def test_a_sample_export_shows_the_subjects_data_under_the_manifests_facts(
    pg_settings: Settings, shop: SampleDatabases, tmp_path: Path
) -> None:
    db = Database.connect(pg_settings)
    try:
        page = exported_page(db, pg_settings, shop, tmp_path)
    finally:
        db.dispose()
    found = items_by_title(page)
    readable = html.unescape(page)

    for hers in ("Ada@Example.com", "2 Ada Street", "s-ada-1", "+441234567890", "INV-1"):
        assert hers in readable
    assert "My engine is broken" in found["Your support tickets"]
    assert "1 Shared Lane" in found["Addresses you gave us (shared with others)"]
    for theirs in ("bob@example.com", "Bob's bio", "s-bob-1", "3 Cy Road", "Bob's question"):
        assert theirs not in readable
    assert "changed mind" not in readable and "INV-2" not in readable

    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#34;ada&#34;)&lt;/script&gt;" in found["Your profile"]

    assert {"Your account", "Your profile", "Saved payment cards", "Your orders"} <= set(found)
    assert {
        "What you ordered",
        "Your sign-ins",
        "Security log of your account",
        "Customers",
    } <= set(found)
    assert not {"orders", "sessions", "order_items"} & set(found)

    receivers = {title for title, item in found.items() if "Who receives it" in item}
    assert receivers == {
        "Your orders",
        "Addresses you gave us",
        "Addresses you gave us (shared with others)",
    }
    assert "<dt>Who receives it</dt><dd>Parcel carriers</dd>" in found["Your orders"]
    shop_purpose = "<dd>Selling and delivering what customers order</dd>"
    assert shop_purpose in found["Your account"] and shop_purpose in found["What you ordered"]
    assert "<dd>Keeping you logged in</dd>" in found["Your sign-ins"]
    assert "<dd>Customer support</dd>" in found["Your support tickets"]
    assert "<dd>Deleted 30 days after it was created</dd>" in found["Your sign-ins"]
    assert "<dd>10 years</dd>" in found["Payments"]
    assert "How long we keep it" not in found["Your account"]
    assert "Legal basis" not in found["Your support tickets"]
    assert "Not specified" not in page
