"""Coalesced reads (`sources/sql/batch.py`): a batch of subjects resolved and read together
exports, for each of them, exactly what that subject's export alone holds: never a row of
another subject of the batch, never one fewer; in statements that do not grow with the
batch. Where Python's split could disagree with SQL, the batch read is dropped and the
subject reads alone."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance import cascade
from compliance.config import Settings
from compliance.identities import Identities, parse_identity
from compliance.sources.base import Coalescing, DataSource, RowsItem
from compliance.sources.registry import Registry, load_registry
from compliance.sources.sql import batch
from compliance.sources.sql.source import SqlSource
from tests.compliance.sources.sqlsample import PSEUDONYM_KEY, load
from tests.compliance.sources.test_sql_statements import recorded
from tests.sample_app import cards
from tests.sample_app.fixtures import SampleDatabases


def email(value: str) -> Identities:
    return Identities.of([parse_identity("email", value)])


SAMPLE_SUBJECTS = [
    email("ada@example.com"),
    email("bob@example.com"),  # shares Ada's address
    email("cy@example.com"),
    email("nobody@example.com"),  # nothing anywhere
    email("ada@example.com"),  # the same subject twice in one batch
]


def exported(source: DataSource, identities: Identities) -> dict[str, list[str]]:
    """Every item of `source`'s export for `identities`: its rows, as comparable text."""
    found: dict[str, list[str]] = {}
    for item in source.export(identities):
        assert isinstance(item, RowsItem)
        found[item.collection] = [
            json.dumps(dict(r), sort_keys=True, default=str) for r in item.rows
        ]
    return found


def alone(registry: Registry, subjects: Sequence[Identities]) -> list[Any]:
    """Each subject resolved and exported on its own: (identities, exports per source)."""
    results = []
    for given in subjects:
        resolved = cascade.resolve(registry.sources, given)
        results.append((resolved, {s.name: exported(s, resolved) for s in registry.sources}))
    return results


def together(registry: Registry, subjects: Sequence[Identities]) -> list[Any]:
    """The same, resolved and read as one batch (what `compliance.coalesce` does)."""
    resolved = cascade.resolve_many(registry.sources, subjects)
    settled = [  # one the batch could not settle resolves alone, as the worker does
        cascade.resolve(registry.sources, given) if found is None else found
        for given, found in zip(subjects, resolved, strict=True)
    ]
    for source in registry.sources:
        assert isinstance(source, Coalescing)
        source.warm(settled)
    try:
        return [(r, {s.name: exported(s, r) for s in registry.sources}) for r in settled]
    finally:
        for source in registry.sources:
            assert isinstance(source, Coalescing)
            source.cool()


def test_a_batch_exports_for_each_subject_exactly_what_it_exports_alone(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        assert None not in cascade.resolve_many(registry.sources, SAMPLE_SUBJECTS)
        expected = alone(registry, SAMPLE_SUBJECTS)
        assert together(registry, SAMPLE_SUBJECTS) == expected
    finally:
        registry.close()
    ada, bob = expected[0][1]["shop"], expected[1][1]["shop"]
    assert "addresses.shared" in ada and "addresses.shared" in bob  # address 10 is both's
    assert not set(ada.get("orders", [])) & set(bob.get("orders", []))
    assert expected[3][1] == {"shop": {}, "crm": {}}


def test_a_batch_whose_orders_ship_home_exports_for_each_subject_exactly_what_it_exports_alone(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    """Every order ships to its customer's home: each subject's orders and the orders of
    anyone shipping to the addresses its user row names are one read for the batch;
    split by subject, each export is what it is alone, and address 10 (Ada's and Bob's
    home) is shared in both."""
    engine = create_engine(sample_dbs.shop_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE orders SET shipping_address_id ="
                    " (SELECT address_id FROM users WHERE users.id = orders.user_id)"
                )
            )
    finally:
        engine.dispose()
    registry = load(sample_dbs, tmp_path)
    try:
        expected = alone(registry, SAMPLE_SUBJECTS)
        shop = registry.get("shop")
        assert isinstance(shop, SqlSource)
        with recorded(shop.engine) as seen:
            assert together(registry, SAMPLE_SUBJECTS) == expected
    finally:
        registry.close()
    orders = [s for s, _ in seen if s.startswith("SELECT orders.")]
    merged = [s for s in orders if "_gdpr_a0_0" in s]  # own and pointing terms together
    assert len(merged) == 1, orders
    for column in ("placed_at", "total"):  # of an order that only ships there: nothing
        assert re.search(
            rf"CASE WHEN .* THEN orders\.{column} ELSE NULL END AS {column}", merged[0]
        )
    assert not [s for s in orders if "_gdpr_r_0" in s], orders  # no pointing read apart
    ada, bob = expected[0][1]["shop"], expected[1][1]["shop"]
    assert "addresses.shared" in ada and "addresses.shared" in bob
    assert "addresses" not in ada  # 11, only hers before, is nobody's now
    assert not set(ada.get("orders", [])) & set(bob.get("orders", []))


def test_the_batchs_statements_do_not_grow_with_the_batch(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    counts = []
    try:
        shop = registry.get("shop")
        assert isinstance(shop, SqlSource)
        for subjects in (SAMPLE_SUBJECTS[:1], SAMPLE_SUBJECTS[:4]):
            with recorded(shop.engine) as seen:
                together(registry, subjects)
            counts.append(len(seen))
        with recorded(shop.engine) as one:
            alone(registry, SAMPLE_SUBJECTS[:1])
    finally:
        registry.close()
    print(f"batch of 1: {counts[0]}, batch of 4: {counts[1]}, alone: {len(one)} statements")
    assert counts[1] == counts[0]
    assert counts[0] <= len(one) + 1  # one more: a read per reference into a shared table


def _cards(url: str, folder: Path) -> Registry:
    path = folder / "sources.toml"
    path.write_text(cards.manifest(url), encoding="utf-8")
    settings = Settings(home=folder / ".gdpr", sources=str(path))
    return load_registry(settings, environ={}, pseudonym_key=PSEUDONYM_KEY)


def test_on_the_card_shop_ann_and_ben_together_get_what_each_gets_alone(
    cards_db: str, tmp_path: Path
) -> None:
    """The schema where a customer pays another's order with their card: the batch
    must not hand Ann's card to Ben because both are read in one statement."""
    subjects = [email("ann@example.com"), email("ben@example.com")]
    registry = _cards(cards_db, tmp_path)
    try:
        assert together(registry, subjects) == alone(registry, subjects)
        assert together(registry, subjects[::-1]) == alone(registry, subjects[::-1])
    finally:
        registry.close()


MEMBERS = """
[sources.club]
kind = "sql"
url = "sqlite:///{path}"

[sources.club.tables.members]
identities = {{ code = "customer_id" }}

[sources.club.tables.visits]
references = [{{ columns = "member_id", table = "members", kind = "owned" }}]
"""


def test_a_row_sql_matches_but_python_would_not_is_read_alone_and_still_exported(
    tmp_path: Path,
) -> None:
    """A case-insensitive column: SQL finds 'AB-1' for the code 'ab-1', Python's
    equality would not. The batch read is dropped; the export holds what SQL finds."""
    path = tmp_path / "club.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE members (id INTEGER PRIMARY KEY, code TEXT COLLATE NOCASE)")
        )
        conn.execute(text("CREATE TABLE visits (id INTEGER PRIMARY KEY, member_id INTEGER)"))
        conn.execute(text("INSERT INTO members VALUES (1, 'AB-1'), (2, 'ab-1'), (3, 'cd-2')"))
        conn.execute(text("INSERT INTO visits VALUES (10, 1), (11, 2), (12, 3)"))
    engine.dispose()
    (tmp_path / "sources.toml").write_text(MEMBERS.format(path=path), encoding="utf-8")
    settings = Settings(home=tmp_path / ".gdpr", sources=str(tmp_path / "sources.toml"))
    registry = load_registry(settings, environ={}, pseudonym_key=PSEUDONYM_KEY)
    subjects = [
        Identities.of([parse_identity("customer_id", "ab-1")]),
        Identities.of([parse_identity("customer_id", "cd-2")]),
    ]
    try:
        assert cascade.resolve_many(registry.sources, subjects) == [None, None]  # dropped
        expected = alone(registry, subjects)
        assert together(registry, subjects) == expected
    finally:
        registry.close()
    first = expected[0][1]["club"]
    assert len(first["members"]) == 2 and len(first["visits"]) == 2
    assert len(expected[1][1]["club"]["visits"]) == 1


def test_an_identity_table_the_resolve_read_is_not_read_again_for_the_export(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        shop = registry.get("shop")
        assert isinstance(shop, SqlSource)
        graph = shop.graph
        tables = [t for t in graph.rules if batch.identity_only(graph, t)]
        assert tables, "the sample shop has tables looked up by identity alone"
        settled = cascade.resolve_many(registry.sources, SAMPLE_SUBJECTS[:3])
        with recorded(shop.engine) as seen:
            shop.warm([s for s in settled if s is not None])
        try:
            exports = [exported(shop, s) for s in settled if s is not None]
        finally:
            shop.cool()
        assert exports == [r[1]["shop"] for r in alone(registry, SAMPLE_SUBJECTS[:3])]
    finally:
        registry.close()
    read = [s for s, _ in seen for t in tables if f" FROM {t} " in f"{s} "]
    # only who else points at a shared row the subjects reach (`batch._read_pointing`)
    assert all("AS _gdpr_r_0 FROM" in s for s in read), read
    assert seen, "the other tables are still read, together"


def test_rows_a_resolve_read_are_taken_once_and_only_while_fresh() -> None:
    now = [100.0]
    kept = batch.Kept(max_age=5.0, clock=lambda: now[0])
    ada, bob = email("ada@example.com"), email("bob@example.com")
    kept.keep([batch.Resolved(ada, {"users": "ada's"}), None], at=99.0)  # type: ignore[dict-item]
    kept.keep([batch.Resolved(bob, {"users": "bob's"})], at=100.0)  # type: ignore[dict-item]
    assert kept.take(ada) == (99.0, {"users": "ada's"})
    assert kept.take(ada) is None  # taken once
    now[0] = 105.5  # bob's read is 5.5 s old: read again rather than trusted
    assert kept.take(bob) is None


def test_past_its_row_bound_a_batched_read_keeps_keys_and_exports_the_same(
    sample_dbs: SampleDatabases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subject with more rows than `BUFFER_ROWS` in a table: the batch holds their keys
    only (the export reads the rows again by key), never a read's worth of whole rows."""
    registry = load(sample_dbs, tmp_path)
    try:
        expected = alone(registry, SAMPLE_SUBJECTS)
        monkeypatch.setattr(batch, "BUFFER_ROWS", 0)
        shop = registry.get("shop")
        assert isinstance(shop, SqlSource)
        settled = cascade.resolve_many(registry.sources, SAMPLE_SUBJECTS)
        shop.warm([s for s in settled if s is not None])
        try:
            subject = shop._warm[settled[0]]  # what the batch kept for Ada
            held = [subject.known_own(t) for t in shop.graph.rules if subject.known(t)]
            assert any(len(found) for found in held)  # her rows' keys
            assert not any(found.full for found in held)  # never a whole row
        finally:
            shop.cool()
        assert together(registry, SAMPLE_SUBJECTS) == expected
    finally:
        registry.close()
