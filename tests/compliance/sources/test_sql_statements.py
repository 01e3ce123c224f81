"""What one request costs the sample shop's database (PostgreSQL), in statements.

Every statement the shop source sends is recorded (SQLAlchemy's ``before_cursor_execute``
on its engine) for one export and one erasure of Ada, from her email address to the
end. The subject is looked up once per table with bound key lists, so the totals are
bounded by the schema, and no statement finds her again through a nested subquery.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from compliance import cascade
from compliance.sources.base import Action, Disposition, RowsItem, Scope
from compliance.sources.sql import engine as sqlengine
from compliance.sources.sql import found as sqlfound
from compliance.sources.sql import keys as sqlkeys
from compliance.sources.sql import subject as sqlsubject
from compliance.sources.sql.source import SqlSource
from tests.compliance.sources.sqlsample import ada_email, ada_resolved, erase_all, load, snapshot
from tests.sample_app import schema
from tests.sample_app.fixtures import SampleDatabases

# Resolving Ada in the shop: her email in the two tables with email columns (users,
# activity_log), then only what that found (her user id, in users); in the cascade's
# second round (the CRM gave her customer number) the three identity tables once more.
RESOLVE = 2 + 1 + 3
# The shop's tables that can hold her rows and are found from her identities or her rows'
# keys: one read each (addresses holds none of her own rows: it is reached through
# shared references only, below).
OWN_TABLES = 12
# addresses, the one table her rows share with other people: one read of the addresses
# her rows point at, one check of which of them rows that stay still use.
SHARED_TABLES = 1
SHARED_READS = 2 * SHARED_TABLES
EXPORT_STATEMENTS = RESOLVE + OWN_TABLES + SHARED_READS

# The erase plan: the same reads as an export (keys and referenced columns only), but
# whether rows that stay still use the address is one read per reference into addresses
# (users.address_id, orders.shipping_address_id) that keeps those rows and their keys,
# and also answers which of them the address's deletion detaches; then the rows that stay
# and point at rows that go, one read per other reference (users.referred_by,
# users.default_payment_method_id, invoices.user_id, payments.order_id). Her rows of the
# three tables looked up by identity alone (users, activity_log, loyalty_cards) came with
# the resolve, which read them in full (`batch.identity_only`): three reads fewer.
ADDRESS_REFERENCES = 2
PLAN = OWN_TABLES - 3 + SHARED_TABLES + ADDRESS_REFERENCES + 4
# The erasure proper, planned rows reused: the records of detached partitions (one
# read); a DELETE per deleted table without references into it (activity_log,
# loyalty_cards, newsletter, profiles, returns, sessions, order_items); an UPDATE per
# reference into the others before their DELETE (payment_methods 1+1, orders 1+1,
# users 2+1); the payments' anonymised columns read and rewritten (2); the address only
# she used: one DELETE that keeps it if a row points at it by then (1). Invoices are kept.
ERASE = 1 + 7 + (2 + 2 + 3) + 2 + 1
# Verification: her rows are looked for again from her identities (users, activity_log,
# loyalty_cards); the tables below them have no parent rows left to start from.
VERIFY = 3
ERASURE_STATEMENTS = RESOLVE + PLAN + ERASE + VERIFY

# A subject's identity values are bound only into reads of the tables that hold them.
IDENTITY_TABLES = ("users", "activity_log", "loyalty_cards")
ADA_VALUES = ("ada@example.com", "C-0001")


@contextmanager
def recorded(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (and its parameters) `engine` sends while the block runs."""
    seen: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((" ".join(statement.split()), params))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _shop(registry: Any) -> SqlSource:
    shop = registry.get("shop")
    assert isinstance(shop, SqlSource)
    _ = shop.graph  # the schema is read once when the source loads, not per request
    return shop


def _show(seen: list[tuple[str, Any]]) -> str:
    return "\n".join(statement[:300] for statement, _ in seen)


def _binds_subject(params: Any) -> bool:
    text = repr(params).lower()
    return any(value.lower() in text for value in ADA_VALUES)


# Whether a row points at the row a statement is on (the orphaned address's DELETE):
# a correlated check that binds nothing, not a lookup of the subject.
POINTED_AT = re.compile(r"EXISTS \(SELECT \* FROM \w+ AS (\w+) WHERE \1\.\w+ = \w+\.\w+\)")


def assert_subject_not_rederived(seen: list[tuple[str, Any]]) -> None:
    """Ada's identities reach only plain reads of the identity tables, and no statement
    nests a query against a table the subject is found in: each read of a table gets
    the keys it needs as bound lists."""
    for statement, params in seen:
        statement = POINTED_AT.sub("EXISTS (pointed at)", statement)
        if _binds_subject(params):
            table = re.match(r"SELECT (?:DISTINCT )?.*? FROM (\w+)", statement)
            assert table is not None and table.group(1) in IDENTITY_TABLES, statement
            assert statement.count("SELECT") == 1, statement
        assert not re.search(r"IN \(SELECT (?!unnest)", statement), statement
        for name in IDENTITY_TABLES:
            assert not re.search(rf"\(SELECT [^()]*FROM {name}\b", statement), statement


def test_an_export_issues_at_most_export_statements_and_never_looks_the_subject_up_again(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(pg_sample_dbs, tmp_path)
    try:
        shop = _shop(registry)
        with recorded(shop.engine) as seen:
            resolved = cascade.resolve(registry.sources, ada_email())
            exported = {
                item.collection: [dict(row) for row in item.rows]
                for item in shop.export(resolved)
                if isinstance(item, RowsItem)
            }
    finally:
        registry.close()
    print(f"export: {len(seen)} statements\n{_show(seen)}")
    assert len(seen) <= EXPORT_STATEMENTS, _show(seen)
    assert_subject_not_rederived(seen)
    found = {name.removesuffix(".shared") for name in exported}
    assert found == set(schema.ADA_ROWS)
    assert [r["id"] for r in exported["addresses.shared"]] == [10]


def test_an_erasure_issues_at_most_erasure_statements_and_never_looks_the_subject_up_again(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(pg_sample_dbs, tmp_path)
    try:
        shop = _shop(registry)
        with recorded(shop.engine) as seen:
            resolved = cascade.resolve(registry.sources, ada_email())
            shop.plan(resolved, Action.ERASE)
            totals = erase_all([shop], resolved)
            residue = shop.verify(resolved)
    finally:
        registry.close()
    print(f"erasure: {len(seen)} statements\n{_show(seen)}")
    assert residue == []
    assert totals["deleted"] == 16
    assert len(seen) <= ERASURE_STATEMENTS, _show(seen)
    assert_subject_not_rederived(seen)


def test_long_key_lists_go_in_chunks_and_find_the_same_rows(
    pg_sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With lists of at most two keys per statement, Ada's three order lines (keyed by
    two orders) are read in more statements, and the export holds the same rows."""
    registry = load(pg_sample_dbs, tmp_path)
    try:
        shop = _shop(registry)
        resolved = cascade.resolve(registry.sources, ada_email())
        whole = {i.collection: [dict(r) for r in i.rows] for i in shop.export(resolved)}
        monkeypatch.setattr(sqlkeys, "CHUNK", 1)
        with recorded(shop.engine) as seen:
            chunked = {i.collection: [dict(r) for r in i.rows] for i in shop.export(resolved)}
    finally:
        registry.close()
    assert chunked == whole
    items = [s for s, _ in seen if re.match(r"SELECT .* FROM order_items\b", s)]
    assert len(items) == 2  # one per order of hers


def test_an_export_of_more_rows_than_it_keeps_reads_them_again_by_key(
    pg_sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `BUFFER_ROWS` a table's read keeps only keys; its item reads the rows by key
    when consumed, and holds the same rows in the same order."""
    registry = load(pg_sample_dbs, tmp_path)
    try:
        shop = _shop(registry)
        resolved = cascade.resolve(registry.sources, ada_email())
        kept = {i.collection: [dict(r) for r in i.rows] for i in shop.export(resolved)}
        monkeypatch.setattr(sqlfound, "BUFFER_ROWS", 1)
        with recorded(shop.engine) as seen:
            again = {i.collection: [dict(r) for r in i.rows] for i in shop.export(resolved)}
    finally:
        registry.close()
    assert again == kept
    assert [r["line_no"] for r in again["order_items"]] == [1, 2, 1]
    by_key = [s for s, _ in seen if re.match(r"SELECT .* FROM order_items WHERE .* ORDER BY", s)]
    assert len(by_key) == 1


def test_a_connection_is_pinged_only_after_it_sat_idle(
    pg_sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = load(pg_sample_dbs, tmp_path)
    pings: list[int] = []
    real = sqlengine.ping

    def counted(dbapi_conn: Any) -> None:
        pings.append(1)
        real(dbapi_conn)

    monkeypatch.setattr(sqlengine, "ping", counted)
    try:
        shop = _shop(registry)
        for _ in shop.export(cascade.resolve(registry.sources, ada_email())):
            pass
        assert pings == []  # busy connections are not pinged on every checkout
        monkeypatch.setattr(sqlengine, "IDLE_PING_SECONDS", 0.0)
        with shop.connect():
            pass
        assert pings == [1]
    finally:
        registry.close()


def _ship_home(url: str) -> None:
    """Ada's order 500 ships to her home (address 10, which Bob shares) instead of 11."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE orders SET shipping_address_id = 10 WHERE id = 500"))
    finally:
        engine.dispose()


def _plan_read(pg_sample_dbs: SampleDatabases, folder: Path) -> tuple[Any, list[str]]:
    folder.mkdir()
    registry = load(pg_sample_dbs, folder)
    try:
        shop = _shop(registry)
        with recorded(shop.engine) as seen:
            plan = shop.plan(ada_resolved(), Action.ERASE)
    finally:
        registry.close()
    found = {(p.location, p.disposition, p.scope, p.count) for p in plan.locations}
    return found, [s for s, _ in seen if re.match(r"SELECT .* FROM orders\b", s)]


def test_orders_and_the_orders_shipping_to_her_address_are_one_read_for_the_erase_plan(
    pg_sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Her user row says she reaches address 10; her orders and every order shipping to
    10 are one statement, which also tells that Bob's order keeps 10 in use. Read apart
    (as when her orders may ship elsewhere), the plan is the same."""
    _ship_home(pg_sample_dbs.shop_url)
    merged, reads = _plan_read(pg_sample_dbs, tmp_path / "merged")
    monkeypatch.setattr(sqlsubject.Subject, "ahead", lambda self, table: [])
    apart, apart_reads = _plan_read(pg_sample_dbs, tmp_path / "apart")
    assert merged == apart
    assert ("addresses", Disposition.RETAIN, Scope.SHARED, 1) in merged
    assert len(reads) == 1, reads
    assert len(apart_reads) == 2, apart_reads
    before = snapshot(pg_sample_dbs.shop_url)
    registry = load(pg_sample_dbs, tmp_path)
    try:
        erase_all([registry.get("shop")], ada_resolved())
    finally:
        registry.close()
    after = snapshot(pg_sample_dbs.shop_url)
    assert after["addresses"] == before["addresses"]  # 10 is Bob's too; 11 nobody's
    assert after["orders"] == {k: v for k, v in before["orders"].items() if v["user_id"] != 1}


def _warm_export(pg_sample_dbs: SampleDatabases, folder: Path) -> tuple[Any, list[str]]:
    """Ada's export as a worker runs it (warmed as a batch of one), and its reads of orders."""
    folder.mkdir()
    registry = load(pg_sample_dbs, folder)
    try:
        shop = _shop(registry)
        resolved = cascade.resolve(registry.sources, ada_email())
        with recorded(shop.engine) as seen:
            shop.warm([resolved])
            items = {i.collection: [dict(r) for r in i.rows] for i in shop.export(resolved)}
    finally:
        registry.close()
    return items, [s for s, _ in seen if re.match(r"SELECT .* FROM orders\b", s)]


def test_orders_and_the_orders_shipping_to_her_address_are_one_read_for_an_export(
    pg_sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for the erase plan: one statement finds her orders and every order shipping to
    address 10, which says 10 is shared with someone else; the export is the same as
    with the two read apart, and holds no order of Bob's."""
    _ship_home(pg_sample_dbs.shop_url)
    merged, reads = _warm_export(pg_sample_dbs, tmp_path / "merged")
    monkeypatch.setattr(sqlsubject.Subject, "ahead", lambda self, table: [])
    apart, apart_reads = _warm_export(pg_sample_dbs, tmp_path / "apart")
    assert merged == apart
    assert [row["id"] for row in merged["addresses.shared"]] == [10]
    assert sorted(row["id"] for row in merged["orders"]) == [500, 501]
    assert len(reads) == 1, reads
    assert len(apart_reads) == 2, apart_reads
