"""The SQL connector on the sample application, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance import cascade
from compliance.errors import ManifestError, SourceUnavailableError
from compliance.sources.base import Action, Disposition, RowsItem, Scope
from compliance.sources.sql import keys as sqlkeys
from compliance.sources.sql import subject as sqlsubject
from compliance.sources.sql.manifest import REDACTED
from compliance.sources.sql.source import SqlSource
from tests.compliance.sources.chunks import erase_chunks
from tests.compliance.sources.sqlsample import (
    ada_email,
    ada_resolved,
    erase_all,
    keys,
    load,
    raw,
    rows,
    snapshot,
)
from tests.sample_app import schema
from tests.sample_app.fixtures import SampleDatabases

SHOP_TABLES = [t for t in schema.SHOP.tables if t != "products"]


def _shop_keys(dbs: SampleDatabases) -> dict[str, set[tuple[Any, ...]]]:
    return {table: set(found) for table, found in snapshot(dbs.shop_url).items()}


def test_resolve_follows_email_to_user_id_and_customer_number_across_databases(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        resolved = cascade.resolve(registry.sources, ada_email())
    finally:
        registry.close()
    assert resolved == ada_resolved()


def test_export_yields_exactly_the_subjects_rows(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        items = [i for s in registry.sources for i in s.export(ada_resolved())]
        exported = {
            (i.source, i.collection): [dict(r) for r in i.rows]
            for i in items
            if isinstance(i, RowsItem)
        }
    finally:
        registry.close()
    shop = registry.get("shop")
    assert isinstance(shop, SqlSource)
    by_key: dict[str, set[tuple[Any, ...]]] = {}
    for (source, collection), found in exported.items():
        table = collection.removesuffix(".shared")
        if source == "shop":
            by_key.setdefault(table, set()).update(
                tuple(r[c] for c in shop.graph.keys[table]) for r in found
            )
    assert by_key == schema.ADA_ROWS
    assert [r["id"] for r in exported[("shop", "addresses.shared")]] == [10]  # Bob's too
    assert [r["id"] for r in exported[("shop", "addresses")]] == [11]
    assert [r["id"] for r in exported[("crm", "customers")]] == [1]
    assert [r["id"] for r in exported[("crm", "tickets")]] == [1]


def test_export_leaves_out_excluded_columns_and_carries_art15_facts(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        users = next(
            i for i in registry.get("shop").export(ada_resolved()) if i.collection == "users"
        )
        assert isinstance(users, RowsItem)
        (row,) = list(users.rows)
    finally:
        registry.close()
    assert "password_hash" not in row
    assert row["email"] == "Ada@Example.com"
    assert users.meta.description == "Your account"
    assert users.meta.purpose == "Selling and delivering what customers order"
    assert users.meta.recipients is None  # declared on orders and addresses, not the source


def test_plan_counts_what_erasure_would_do_and_writes_nothing(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    before = _shop_keys(sample_dbs)
    registry = load(sample_dbs, tmp_path)
    try:
        plan = cascade.plan(registry.sources, ada_email(), Action.ERASE)
    finally:
        registry.close()
    locations = plan.sources[0].locations
    shop = {(loc.location, loc.scope, loc.disposition): loc.count for loc in locations}
    assert shop == {
        ("users", Scope.SUBJECT, Disposition.DELETE): 1,
        ("profiles", Scope.SUBJECT, Disposition.DELETE): 1,
        ("payment_methods", Scope.SUBJECT, Disposition.DELETE): 1,
        ("orders", Scope.SUBJECT, Disposition.DELETE): 2,
        ("order_items", Scope.SUBJECT, Disposition.DELETE): 3,
        ("returns", Scope.SUBJECT, Disposition.DELETE): 1,
        ("sessions", Scope.SUBJECT, Disposition.DELETE): 2,
        ("activity_log", Scope.SUBJECT, Disposition.DELETE): 2,
        ("newsletter", Scope.SUBJECT, Disposition.DELETE): 1,
        ("loyalty_cards", Scope.SUBJECT, Disposition.DELETE): 1,
        ("addresses", Scope.SUBJECT, Disposition.DELETE): 1,  # only hers
        ("addresses", Scope.SHARED, Disposition.RETAIN): 1,  # the one Bob uses stays
        ("payments", Scope.SUBJECT, Disposition.ANONYMIZE): 2,
        ("invoices", Scope.SUBJECT, Disposition.RETAIN): 1,
        ("payments.order_id", Scope.REFERENCE, Disposition.DETACH): 2,
        ("invoices.user_id", Scope.REFERENCE, Disposition.DETACH): 1,
        ("users.referred_by", Scope.OTHERS, Disposition.DETACH): 1,  # Bob was referred by her
    }
    assert plan.sources[0].total == 19  # each of her rows once; references are detail
    invoices = next(loc for loc in locations if loc.location == "invoices")
    assert invoices.legal_basis.startswith("Art. 6(1)(c)")
    assert plan.identity_types == {"email": 1, "user_id": 1, "customer_id": 1}
    assert "ada" not in plan.render().lower()
    assert _shop_keys(sample_dbs) == before


def test_erasure_deletes_anonymizes_and_retains_exactly_the_subjects_rows(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    before = _shop_keys(sample_dbs)
    registry = load(sample_dbs, tmp_path)
    try:
        totals = erase_all(registry.sources, ada_resolved())
    finally:
        registry.close()
    after = _shop_keys(sample_dbs)
    kept = {"payments", "invoices"}
    for table in SHOP_TABLES:
        expected = before[table] - (set() if table in kept else schema.ADA_ROWS[table])
        if table == "addresses":
            expected = before[table] - {(11,)}
        assert after[table] == expected, table
    assert after["products"] == before["products"]
    assert keys(sample_dbs.crm_url, "customers") == {(2,)}
    assert keys(sample_dbs.crm_url, "tickets") == {(2,)}
    assert totals["retained"] == 1
    payments = rows(sample_dbs.shop_url, "payments")
    for key in [(800,), (801,)]:
        assert payments[key]["card_last4"] is None
        assert payments[key]["order_id"] is None
        assert len(payments[key]["billing_name"]) == 32
        assert payments[key]["billing_name"] != "Ada Lovelace"
    assert payments[(800,)]["billing_name"] == payments[(801,)]["billing_name"]  # joinable
    invoice = rows(sample_dbs.shop_url, "invoices")[(900,)]
    assert (invoice["number"], invoice["user_id"]) == ("INV-1", None)


def test_erasure_leaves_other_subjects_untouched(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    before = snapshot(sample_dbs.shop_url)
    registry = load(sample_dbs, tmp_path)
    try:
        erase_all(registry.sources, ada_resolved())
    finally:
        registry.close()
    after = snapshot(sample_dbs.shop_url)
    for table, old in before.items():
        new = after[table]
        theirs = {k: v for k, v in old.items() if k not in schema.ADA_ROWS.get(table, set())}
        if table == "users":  # Bob's referral pointed at her: detached, nothing else
            theirs[(2,)] = {**theirs[(2,)], "referred_by": None}
        if table == "addresses":  # shared with Bob: stays
            theirs[(10,)] = old[(10,)]
        assert {k: new[k] for k in theirs} == theirs, table
    assert rows(sample_dbs.shop_url, "addresses")[(10,)]["street"] == "1 Shared Lane"


def test_rerunning_erasure_is_a_no_op(sample_dbs: SampleDatabases, tmp_path: Path) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        erase_all(registry.sources, ada_resolved())
        state = snapshot(sample_dbs.shop_url)
        again = erase_all(registry.sources, ada_resolved())
    finally:
        registry.close()
    assert again == {"deleted": 0, "anonymized": 0, "retained": 0, "detached": 0, "others": 0}
    assert snapshot(sample_dbs.shop_url) == state


def test_erasure_resumes_from_its_checkpoint_in_a_new_process(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    """Each batch of one row runs on a freshly loaded source, as after a worker restart."""
    checkpoint: dict[str, Any] = {}
    calls = 0
    while True:
        registry = load(sample_dbs, tmp_path)
        try:
            result = registry.get("shop").erase(ada_resolved(), checkpoint, 1)
        finally:
            registry.close()
        calls += 1
        checkpoint = dict(result.checkpoint)
        if result.done:
            break
    assert calls > 20
    registry = load(sample_dbs, tmp_path)
    try:
        assert registry.get("shop").verify(ada_resolved()) == []
        assert keys(sample_dbs.shop_url, "addresses") == {(10,), (12,)}
    finally:
        registry.close()


def test_verify_reports_residue_by_location_without_values(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        shop = registry.get("shop")
        before = {r.location: r.count for r in shop.verify(ada_resolved())}
        erase_all([shop], ada_resolved())
        engine = create_engine(sample_dbs.shop_url)
        with engine.begin() as conn:  # the app logs her in again after the erasure
            conn.execute(
                text(
                    "INSERT INTO activity_log (id, actor_email, action, at) VALUES (9, :e, 'x', :t)"
                ),
                {"e": "ada@example.com", "t": schema.T0},
            )
        engine.dispose()
        residue = shop.verify(ada_resolved())
    finally:
        registry.close()
    assert before["shop/users"] == 1
    assert before["shop/payments"] == 2  # not anonymised yet
    assert "shop/invoices" not in before  # retained rows are not residue
    assert {(r.location, r.count) for r in residue} == {("shop/activity_log", 1)}
    assert "ada" not in repr(residue).lower()


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("email", "x' OR 1=1 --"),
        ("user_id", "1 OR 1=1"),
        ("user_id", "1; DROP TABLE users; --"),
        ("user_id", "99999999999999999999999"),
        ("email", "a" * 10_000),
        ("customer_id", "C-0001' OR '1'='1"),
        ("email", "%"),
        ("user_id", "%"),
    ],
)
def test_hostile_identity_values_match_nothing_and_harm_nothing(
    sample_dbs: SampleDatabases, tmp_path: Path, kind: str, value: str
) -> None:
    before = _shop_keys(sample_dbs)
    registry = load(sample_dbs, tmp_path)
    try:
        identities = raw(kind, value)
        assert cascade.resolve(registry.sources, identities) == identities
        plan = cascade.plan(registry.sources, identities, Action.ERASE)
        assert [loc.count for p in plan.sources for loc in p.locations] == [0]  # invoices
        assert erase_all(registry.sources, identities)["deleted"] == 0
    finally:
        registry.close()
    assert _shop_keys(sample_dbs) == before


def test_a_reference_cycle_without_a_declared_back_reference_is_refused(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    manifest = sample_dbs.manifest().replace(
        'columns = "default_payment_method_id"\ntable = "payment_methods"\nkind = "link"\n'
        'on_parent_erase = "detach"',
        'columns = "default_payment_method_id"\ntable = "payment_methods"\nkind = "owned"',
    )
    with pytest.raises(ManifestError, match="cycle") as caught:
        load(sample_dbs, tmp_path, manifest=manifest)
    assert "default_payment_method_id" in str(caught.value)
    assert "kind = 'link'" in str(caught.value)


def _cy_orders_to_11(engine: Any, order: int) -> None:
    """Cy places order `order`, shipping to address 11 (the one only Ada used)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO orders (id, user_id, shipping_address_id, placed_at, total)"
                " VALUES (:id, 3, 11, :t, 1)"
            ),
            {"id": order, "t": schema.T0},
        )


def _erase_as_cy_orders_to_11(
    sample_dbs: SampleDatabases, folder: Path, order: int, manifest: str = ""
) -> None:
    """Erase Ada; after the first chunk (which finds address 11 only hers), Cy orders to 11."""
    registry = load(sample_dbs, folder, manifest=manifest)
    try:
        shop = registry.get("shop")
        first = shop.erase(ada_resolved(), {}, 1000)
        assert first.checkpoint["orphans"] == {"addresses": [[11]]}
        engine = create_engine(sample_dbs.shop_url)
        _cy_orders_to_11(engine, order)
        engine.dispose()
        erase_chunks(shop, ada_resolved(), 1000, first.checkpoint)
    finally:
        registry.close()


def test_a_shared_row_still_used_when_its_turn_comes_is_kept(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    """Address 11 is orphaned when erasure starts; a new order ships there meanwhile."""
    _erase_as_cy_orders_to_11(sample_dbs, tmp_path, 600)
    assert (11,) in keys(sample_dbs.shop_url, "addresses")


def test_a_row_pointing_at_an_orphan_written_after_its_turn_began_keeps_it_unchanged(
    sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Address 11 is orphaned; Cy's new order ships there just after the addresses' turn
    began, before their delete batch. The address stays, and Cy's order still points at
    it: nobody else's row is changed to let the subject's shared row go."""
    registry = load(sample_dbs, tmp_path)
    engine = create_engine(sample_dbs.shop_url)
    at_turn = sqlsubject.Subject.at_turn

    def then_an_order(self: Any, conn: Any, table: str, since: float) -> Any:
        found = at_turn(self, conn, table, since)
        if table == "addresses":
            _cy_orders_to_11(engine, 601)
        return found

    monkeypatch.setattr(sqlsubject.Subject, "at_turn", then_an_order)
    try:
        erase_chunks(registry.get("shop"), ada_resolved(), 1000)
        with engine.connect() as conn:
            shipping = conn.execute(
                text("SELECT shipping_address_id FROM orders WHERE id = 601")
            ).scalar_one()
    finally:
        registry.close()
        engine.dispose()
    assert (11,) in keys(sample_dbs.shop_url, "addresses")
    assert shipping == 11


def test_an_anonymised_shared_row_used_again_when_its_turn_comes_is_left_as_it_was(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    """Addresses anonymised instead of deleted: 11, only Ada's when erasure starts, is
    checked again before it is changed; Cy's new order ships there, so it stays intact."""
    manifest = sample_dbs.manifest().replace(
        'recipients = ["Parcel carriers"]\n\n[sources.shop.tables.orders]',
        'recipients = ["Parcel carriers"]\non_erase = "anonymize"\n'
        'anonymize = { street = "redact", city = "redact", postcode = "redact" }\n\n'
        "[sources.shop.tables.orders]",
        1,
    )
    before = rows(sample_dbs.shop_url, "addresses")
    _erase_as_cy_orders_to_11(sample_dbs, tmp_path, 602, manifest)
    assert rows(sample_dbs.shop_url, "addresses") == before


def test_a_chunk_goes_on_from_table_to_table_while_they_hold_fewer_rows_than_a_batch(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    """Ada's 16 rows in the shop: after the first chunk (which only finds the address she
    alone used), one chunk at the default batch."""
    wide = load(sample_dbs, tmp_path)
    try:
        chunks = erase_chunks(wide.get("shop"), ada_resolved(), 1000)
    finally:
        wide.close()
    assert chunks == [0, 16]


def test_a_chunk_of_small_batches_stays_under_two_batches(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    """With batches of 3 rows: more chunks, none holding two batches, the same rows."""
    narrow = load(sample_dbs, tmp_path)
    try:
        chunks = erase_chunks(narrow.get("shop"), ada_resolved(), 3)
    finally:
        narrow.close()
    assert sum(chunks) == 16
    assert len(chunks) > 6
    assert max(chunks) <= 2 * 3 - 1


def _erase_plan(sample_dbs: SampleDatabases, folder: Path) -> set[tuple[Any, ...]]:
    folder.mkdir()
    registry = load(sample_dbs, folder)
    try:
        plan = registry.get("shop").plan(ada_resolved(), Action.ERASE)
    finally:
        registry.close()
    return {(p.location, p.disposition, p.scope, p.count) for p in plan.locations}


def test_the_rows_pointing_at_a_shared_row_are_read_once_for_the_plan_or_asked_again(
    sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erase plan keeps the rows pointing at the address only Ada used, which say both
    that nobody else uses it and which references its deletion clears; with more such
    rows than it keeps, it asks each question of the database instead: the same plan,
    and the same erasure."""
    kept = _erase_plan(sample_dbs, tmp_path / "kept")
    monkeypatch.setattr(sqlsubject, "POINTING_ROWS", 0)
    asked = _erase_plan(sample_dbs, tmp_path / "asked")
    assert kept == asked
    assert ("addresses", Disposition.DELETE, Scope.SUBJECT, 1) in kept
    before = keys(sample_dbs.shop_url, "addresses")
    registry = load(sample_dbs, tmp_path)
    try:
        erase_all([registry.get("shop")], ada_resolved())
    finally:
        registry.close()
    assert keys(sample_dbs.shop_url, "addresses") == before - {(11,)}


def test_anonymize_with_redact_writes_the_marker(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    manifest = sample_dbs.manifest().replace('billing_name = "hmac"', 'billing_name = "redact"')
    registry = load(sample_dbs, tmp_path, manifest=manifest)
    try:
        erase_all(registry.sources, ada_resolved())
    finally:
        registry.close()
    payments = rows(sample_dbs.shop_url, "payments")
    assert payments[(800,)]["billing_name"] == REDACTED
    assert payments[(802,)]["billing_name"] == "Bob"


def test_erasure_binds_key_lists_in_bounded_chunks_and_erases_the_same(
    sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lists of at most two values per statement (one composite key on SQLite), one row
    per batch: Ada's rows go, everyone else's stay as they were."""
    monkeypatch.setattr(sqlkeys, "CHUNK", 2)
    monkeypatch.setattr(sqlkeys, "LIST_PARAMS", 2)
    before = snapshot(sample_dbs.shop_url)
    registry = load(sample_dbs, tmp_path)
    try:
        erase_all(registry.sources, ada_resolved(), batch=1)
        assert registry.get("shop").verify(ada_resolved()) == []
    finally:
        registry.close()
    after = snapshot(sample_dbs.shop_url)
    for table, ada in schema.ADA_ROWS.items():
        if table in ("payments", "invoices"):  # anonymised, retained
            ada = set()
        elif table == "addresses":
            ada = {(11,)}  # 10 is Bob's too
        assert set(after[table]) == set(before[table]) - ada, table
    assert after["users"][(2,)] == {**before["users"][(2,)], "referred_by": None}
    assert after["users"][(3,)] == before["users"][(3,)]
    assert after["orders"][(502,)] == before["orders"][(502,)]


def test_a_locked_row_times_out_as_a_retryable_error(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    """Each batch runs with lock_timeout: a row the application holds does not hang us."""
    registry = load(pg_sample_dbs, tmp_path, lock_timeout_ms=200)
    holder = create_engine(pg_sample_dbs.shop_url)
    try:
        with holder.begin() as conn:
            conn.execute(text("SELECT * FROM sessions WHERE token = 's-ada-1' FOR UPDATE"))
            started = time.monotonic()
            with pytest.raises(SourceUnavailableError, match=r"source shop: .*LockNotAvailable"):
                erase_all(registry.sources, ada_resolved())
            assert time.monotonic() - started < 5
        erase_all(registry.sources, ada_resolved())  # and the next attempt goes through
        assert registry.get("shop").verify(ada_resolved()) == []
    finally:
        holder.dispose()
        registry.close()
