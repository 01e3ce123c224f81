"""Whose row is it: the ownership model on the card shop (`tests.sample_app.cards`), on
SQLite and PostgreSQL. Exports and erasures of Ann and Ben, in both orders, touch exactly
their rows and never another subject's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance import cascade
from compliance.config import Settings
from compliance.errors import ManifestError, ResidualDataError
from compliance.identities import Identities, parse_identity
from compliance.sources.base import Action, Disposition, RowsItem, Scope
from compliance.sources.registry import Registry, load_registry
from compliance.sources.sql.manifest import REDACTED
from tests.compliance.sources.sqlsample import PSEUDONYM_KEY, erase_all, snapshot
from tests.sample_app import cards
from tests.sample_app.fixtures import cards_database

ANN = Identities.of([parse_identity("email", "ann@example.com")])
BEN = Identities.of([parse_identity("email", "ben@example.com")])


def _load(url: str, folder: Path, manifest: str = "") -> Registry:
    path = folder / "sources.toml"
    path.write_text(manifest or cards.manifest(url), encoding="utf-8")
    settings = Settings(home=folder / ".gdpr", sources=str(path))
    return load_registry(settings, environ={}, pseudonym_key=PSEUDONYM_KEY)


def _keys(url: str) -> dict[str, set[tuple[Any, ...]]]:
    return {table: set(rows) for table, rows in snapshot(url).items() if table != "visits"}


def _visits(url: str) -> set[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT id FROM visits"))}
    finally:
        engine.dispose()


def _run(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def _export(url: str, folder: Path, who: Identities) -> dict[str, set[Any]]:
    registry = _load(url, folder)
    try:
        resolved = cascade.resolve(registry.sources, who)
        found: dict[str, set[Any]] = {}
        for item in registry.get("cards").export(resolved):
            assert isinstance(item, RowsItem)
            rows = list(item.rows)
            first = "order_id" if item.collection == "order_items" else "id"
            found[item.collection] = {r[first] for r in rows}
            if item.collection == "payment_card":
                mine = {int(v) for v in resolved.values("user_id")}
                assert all(r["customer_id"] in mine for r in rows)
        return found
    finally:
        registry.close()


def _erase(url: str, folder: Path, who: Identities) -> dict[str, int]:
    registry = _load(url, folder)
    try:
        resolved = cascade.resolve(registry.sources, who)
        totals = erase_all(registry.sources, resolved, batch=2)
        assert registry.get("cards").verify(resolved) == []
        return totals
    finally:
        registry.close()


def test_an_export_holds_the_subjects_card_and_never_the_card_of_the_customer_who_paid(
    cards_db: str, tmp_path: Path
) -> None:
    ann = _export(cards_db, tmp_path, ANN)
    assert ann == {
        "customers": {1},
        "addresses": {11},
        "addresses.shared": {10},
        "payment_card": {100},  # not Ben's 101, which paid her order 501
        "orders": {500, 501},
        "order_items": {500, 501},
        "payments": {800, 801},
        "logins": {1},
        "visits": {1, 2},
    }
    ben = _export(cards_db, tmp_path, BEN)
    assert ben == {
        "customers": {2},
        "addresses.shared": {10},
        "payment_card": {101},
        "orders": {502},  # not Ann's 501, though it was paid with his card
        "order_items": {502},
        "payments": {802},
        "logins": {2},
        "visits": {3},
    }


def test_the_export_plan_names_other_peoples_rows_left_out(cards_db: str, tmp_path: Path) -> None:
    registry = _load(cards_db, tmp_path)
    try:
        plan = cascade.plan(registry.sources, ANN, Action.EXPORT)
    finally:
        registry.close()
    others = [loc for loc in plan.sources[0].locations if loc.scope == Scope.OTHERS]
    assert [(o.location, o.disposition, o.count) for o in others] == [
        ("payment_card", Disposition.UNTOUCHED, 1)
    ]


def test_erasing_ann_then_ben_touches_only_their_rows(cards_db: str, tmp_path: Path) -> None:
    before = _keys(cards_db)
    totals = _erase(cards_db, tmp_path, ANN)
    after = _keys(cards_db)
    assert after["customers"] == {(0,), (2,), (3,)}  # 0: the placeholder, made on first use
    assert after["payment_card"] == {(101,), (102,)}  # Ben's card stays whole
    assert after["orders"] == {(0,), (502,), (503,)}
    assert after["addresses"] == {(10,), (12,)}  # Ben still lives at 10
    assert after["payments"] == before["payments"]  # kept by law, anonymised
    assert _visits(cards_db) == {3, 4}
    rows = snapshot(cards_db)
    assert rows["payment_card"][(101,)]["holder"] == "BEN B"
    assert rows["orders"][(502,)]["payment_card_id"] == 101
    for key in [(800,), (801,)]:
        payment = rows["payments"][key]
        assert (payment["order_id"], payment["customer_id"]) == (0, 0)
        assert payment["payer_name"] == REDACTED
    assert rows["payments"][(802,)]["payer_name"] == "Ben B"
    assert totals["others"] == 0
    _erase(cards_db, tmp_path, BEN)
    after = _keys(cards_db)
    assert after["customers"] == {(0,), (3,)}
    assert after["payment_card"] == {(102,)}
    assert after["orders"] == {(0,), (503,)}
    assert after["addresses"] == {(12,)}
    assert snapshot(cards_db)["payments"][(803,)]["payer_name"] == "Cat C"


def test_erasing_ben_keeps_his_card_anonymised_while_anns_order_points_at_it(
    cards_db: str, tmp_path: Path
) -> None:
    totals = _erase(cards_db, tmp_path, BEN)
    rows = snapshot(cards_db)
    card = rows["payment_card"][(101,)]
    assert (card["customer_id"], card["holder"], card["ccn"], card["code"]) == (
        None,
        REDACTED,
        None,
        None,
    )
    assert rows["orders"][(501,)]["payment_card_id"] == 101  # Ann's order is intact
    assert set(rows["customers"]) == {(0,), (1,), (3,)}
    assert (502,) not in rows["orders"]
    assert totals["others"] == 0  # nobody else's row was changed
    _erase(cards_db, tmp_path, ANN)  # then Ann: the anonymised card goes with her order
    after = _keys(cards_db)
    assert after["payment_card"] == {(102,)}
    assert after["customers"] == {(0,), (3,)}
    assert after["orders"] == {(0,), (503,)}


def test_a_card_that_pays_only_another_customers_order_is_not_deleted_with_that_customer(
    cards_db: str, tmp_path: Path
) -> None:
    _run(cards_db, "DELETE FROM payments WHERE id = 802")
    _run(cards_db, "DELETE FROM order_items WHERE order_id = 502")
    _run(cards_db, "DELETE FROM orders WHERE id = 502")
    _erase(cards_db, tmp_path, ANN)
    card = snapshot(cards_db)["payment_card"][(101,)]
    assert (card["customer_id"], card["holder"], card["ccn"]) == (2, "BEN B", "5500000000000004")


def test_the_erase_plan_shows_rows_kept_for_others_and_writes_nothing(
    cards_db: str, tmp_path: Path
) -> None:
    before = snapshot(cards_db)
    registry = _load(cards_db, tmp_path)
    try:
        plan = cascade.plan(registry.sources, BEN, Action.ERASE)
    finally:
        registry.close()
    where = {(loc.location, loc.scope, loc.disposition): loc for loc in plan.sources[0].locations}
    kept = where[("payment_card", Scope.SUBJECT, Disposition.ANONYMIZE)]
    assert (kept.count, kept.note) == (1, "kept: rows of other people point at them")
    assert where[("payments.order_id", Scope.REFERENCE, Disposition.REPOINT)].count == 1
    assert where[("payments.customer_id", Scope.REFERENCE, Disposition.REPOINT)].count == 1
    assert where[("addresses", Scope.SHARED, Disposition.RETAIN)].count == 1
    assert ("payment_card", Scope.SUBJECT, Disposition.DELETE) not in where
    assert snapshot(cards_db) == before


def test_a_rerun_after_both_erasures_changes_nothing(cards_db: str, tmp_path: Path) -> None:
    _erase(cards_db, tmp_path, BEN)
    _erase(cards_db, tmp_path, ANN)
    state = snapshot(cards_db)
    again = _erase(cards_db, tmp_path, ANN)
    assert again["deleted"] == again["anonymized"] == again["others"] == 0
    assert snapshot(cards_db) == state


# --- fail early: manifest mistakes ---------------------------------------------------------


def _refused(url: str, folder: Path, old: str, new: str) -> str:
    manifest = cards.manifest(url)
    assert old in manifest
    with pytest.raises(ManifestError) as caught:
        _load(url, folder, manifest.replace(old, new)).close()
    return str(caught.value)


def test_a_reference_between_columns_of_different_types_names_both_ends_and_types(
    cards_db: str, tmp_path: Path
) -> None:
    message = _refused(
        cards_db,
        tmp_path,
        'ignore_tables = ["support_requests"]',
        "[sources.cards.tables.support_requests]\n"
        'references = [{ columns = "customer_ref", table = "customers", kind = "owned" }]',
    )
    assert "cards.support_requests.customer_ref -> customers.id" in message
    assert "VARCHAR(20)" in message and "INTEGER" in message


def test_every_manifest_mistake_is_reported_at_once_in_manifest_order(
    cards_db: str, tmp_path: Path
) -> None:
    manifest = (
        cards.manifest(cards_db)
        .replace(
            'description = "Addresses"',
            'description = "Addresses"\nidentities = { nope = "email" }',
        )
        .replace('anonymize = { payer_name = "redact" }', 'anonymize = { amount = "null" }')
        .replace(
            "[sources.cards.tables.logins]", '[sources.cards.tables.logins]\nexport_exclude = ["x"]'
        )
    )
    messages = set()
    for _ in range(3):
        with pytest.raises(ManifestError) as caught:
            _load(cards_db, tmp_path, manifest).close()
        messages.add(str(caught.value))
        problems = caught.value.problems
    assert len(messages) == 1  # the same on every run
    assert [p.split(":")[0] for p in problems] == [
        "sources.cards.tables.addresses.identities",
        "sources.cards.tables.payments.anonymize.amount",
        "sources.cards.tables.logins.export_exclude",
    ]


def test_keeping_a_not_null_integer_key_offers_a_way_through_not_a_circle(
    cards_db: str, tmp_path: Path
) -> None:
    old = (
        '{ columns = "customer_id", table = "customers", kind = "owned",'
        ' on_parent_erase = "placeholder" }'
    )
    no_way = _refused(cards_db, tmp_path, old, '{ columns = "customer_id", table = "customers" }')
    assert "payments(customer_id) -> customers is NOT NULL" in no_way
    assert "on_parent_erase = 'placeholder'" in no_way and "'anonymize'" in no_way
    for strategy in ("null", "hmac", "redact"):
        message = _refused(
            cards_db,
            tmp_path,
            'anonymize = { payer_name = "redact" }',
            f'anonymize = {{ payer_name = "redact", customer_id = "{strategy}" }}',
        )
        assert "NOT NULL and not text, so it cannot be anonymised in place" in message
        assert "'placeholder'" in message


def test_rows_others_point_at_need_a_declared_way_to_be_kept(cards_db: str, tmp_path: Path) -> None:
    message = _refused(
        cards_db, tmp_path, 'anonymize = { holder = "redact", ccn = "null", code = "null" }', ""
    )
    assert message.startswith("sources.cards.tables.payment_card: ")
    assert "anonymize =" in message and "on_parent_erase = 'detach'" in message


def test_rows_whose_key_does_not_compare_equal_fail_the_erasure_before_their_parent_goes(
    tmp_path: Path,
) -> None:
    """SQLite keeps timestamps as text: one written without microseconds is not found
    again by its key; the erasure stops, loudly, while the customer row still leads to it."""
    with cards_database("sqlite", tmp_path) as url:
        _run(url, "INSERT INTO visits VALUES (9, '2025-06-05 10:00:00', 1, '/x')")
        registry = _load(url, tmp_path)
        try:
            resolved = cascade.resolve(registry.sources, ANN)
            with pytest.raises(ResidualDataError, match=r"1 row\(s\) of visits are still there"):
                erase_all(registry.sources, resolved)
        finally:
            registry.close()
        assert (1,) in _keys(url)["customers"]
        assert 9 in _visits(url)
