"""Erasure receipts: totals that agree with their lines, lines in the subject's words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.erasure import run_erasure
from compliance.errors import ResidualDataError
from compliance.execution import RunContext
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.models import DsrRequest, RequestKind
from compliance.receipts import (
    COUNT_KEYS,
    FOUND_WHILE_ERASING,
    KEPT_FOR_OTHERS,
    reconcile,
    summarise,
)
from compliance.requests import Submission, submit
from compliance.sealed import load_identities
from compliance.sources.art15 import location_facts
from compliance.sources.base import Art15
from compliance.sources.registry import Registry
from tests.compliance.helpers import NOW
from tests.compliance.sources.sqlsample import load
from tests.sample_app.fixtures import SampleDatabases


def _entry(**counts: int) -> dict[str, Any]:
    return {
        "source": "shop",
        "deleted": 0,
        "anonymized": 0,
        "retained": 0,
        **counts,
        "locations": [
            {"location": "orders", "disposition": "delete", "deleted": 2, "scope": "subject"},
            {"location": "payments", "disposition": "anonymize", "anonymized": 2},
            {"location": "invoices", "disposition": "retain", "retained": 1, "scope": "subject"},
            {"location": "payments.order_id", "detached": 2, "scope": "reference"},
            {"location": "addresses", "retained": 1, "scope": "shared"},
        ],
    }


def _sums(entry: dict[str, Any]) -> dict[str, int]:
    own = [loc for loc in entry["locations"] if loc.get("scope", "subject") == "subject"]
    return {key: sum(loc.get(key, 0) for loc in own) for key in COUNT_KEYS}


def test_more_erased_than_planned_becomes_a_line_of_its_own() -> None:
    entry = reconcile(_entry(deleted=3, anonymized=3, retained=1))
    assert (
        {k: entry[k] for k in COUNT_KEYS}
        == _sums(entry)
        == {
            "deleted": 3,
            "anonymized": 3,
            "retained": 1,
        }
    )
    extra = [loc for loc in entry["locations"] if loc.get("note") == FOUND_WHILE_ERASING]
    assert [(loc.get("deleted"), loc.get("anonymized")) for loc in extra] == [(1, None), (None, 1)]


def test_a_repeated_batch_that_counted_less_keeps_the_plans_count() -> None:
    entry = reconcile(_entry(deleted=1, anonymized=0, retained=1))
    assert {k: entry[k] for k in COUNT_KEYS} == {"deleted": 2, "anonymized": 2, "retained": 1}
    assert not any(loc.get("note") == FOUND_WHILE_ERASING for loc in entry["locations"])


def test_retained_rows_count_once_however_often_a_retry_saw_them() -> None:
    entry = reconcile(_entry(deleted=2, anonymized=2, retained=3))
    assert entry["retained"] == 1 == _sums(entry)["retained"]


def test_an_entry_without_a_plan_keeps_its_counts() -> None:
    entry = {"source": "once", "deleted": 3, "anonymized": 0, "retained": 0, "locations": []}
    assert reconcile(entry) == entry
    assert summarise({"sources": [entry]}).total("deleted") == 3


FACTS = {
    "shop": {
        "orders": Art15(description="Your orders"),
        "invoices": Art15(description="Your invoices", retention="10 years (commercial law)"),
        "payments": Art15(legal_basis="Art. 6(1)(c) GDPR: tax law"),
        "addresses": Art15(description="Addresses you gave us"),
    },
    "crm": {"orders": Art15(description="Your orders")},
}


def _receipt(*locations: dict[str, Any], source: str = "shop", kind: str = "") -> dict[str, Any]:
    entry = {"source": source, "kind": kind, "locations": list(locations)}
    return {"sources": [entry], "verified": True}


def test_lines_speak_in_the_manifests_descriptions_and_never_in_dotted_names() -> None:
    receipt = _receipt(
        {"location": "order_items", "disposition": "delete", "deleted": 3},
        {"location": "orders", "disposition": "delete", "deleted": 3},
        {"location": "invoices", "disposition": "retain", "retained": 1, "legal_basis": "HGB"},
        {"location": "payments", "disposition": "anonymize", "anonymized": 2},
        {
            "location": "invoices.user_id",
            "disposition": "detach",
            "detached": 1,
            "scope": "reference",
        },
        {
            "location": "users.referred_by",
            "disposition": "detach",
            "detached": 1,
            "scope": "others",
        },
        kind="sql",
    )
    said = [f"{line.title}: {line.text}" for line in summarise(receipt, FACTS).lines]
    assert said == [
        "Your orders: 3 deleted",  # parents first, then what is kept
        "Order items: 3 deleted",
        "Payments: your details removed, 2 kept (Art. 6(1)(c) GDPR: tax law)",
        "Your invoices: 1 kept for 10 years (commercial law; HGB)",
    ]


def test_rows_kept_for_others_say_so_without_a_legal_basis() -> None:
    kept = {
        "location": "orders",
        "disposition": "anonymize",
        "anonymized": 1,
        "note": KEPT_FOR_OTHERS,
    }
    (line,) = summarise(_receipt(kept), FACTS).lines
    assert f"{line.title}: {line.text}" == (
        "Orders of yours that others still rely on: your details removed, 1 kept"
    )


def test_shared_rows_are_listed_apart_and_count_in_no_total() -> None:
    shared = {"location": "addresses", "disposition": "retain", "retained": 1, "scope": "shared"}
    summary = summarise(_receipt(shared), FACTS)
    assert summary.lines == ()
    assert [(s.title, s.kept) for s in summary.shared] == [("Addresses you gave us", 1)]
    assert summary.total("retained") == 0


def test_a_title_two_sources_share_names_each_source() -> None:
    receipt = {
        "sources": [
            {"source": source, "locations": [{"location": "orders", "deleted": 1}]}
            for source in ("shop", "crm")
        ]
    }
    titles = [line.title for line in summarise(receipt, FACTS).lines]
    assert titles == ["Your orders (Shop)", "Your orders (Crm)"]


def test_templates_and_wildcards_are_humanised() -> None:
    receipt = _receipt(
        {"location": "avatars/{user_id}/", "deleted": 2},
        {"location": "session:{user_id}:*", "deleted": 1},
        source="media",
    )
    assert [line.title for line in summarise(receipt).lines] == ["Avatars", "Session"]


def test_held_places_are_titled_too() -> None:
    receipt = {
        "sources": [],
        "held": [
            {"source": "shop", "holds": [{"location": "orders", "legal_basis": "claims"}]},
            {
                "source": "crm",
                "holds": [
                    {"location": "*", "legal_basis": "audit", "until": "2027-01-02T00:00:00"}
                ],
            },
        ],
    }
    held = summarise(receipt, FACTS).held
    assert [(h.title, h.until) for h in held] == [
        ("Your orders", None),
        ("Your data in our crm records", "2027-01-02"),
    ]


# --- on the sample application ---------------------------------------------------------------


@pytest.fixture
def registry(sample_dbs: SampleDatabases, tmp_path: Path) -> Iterator[Registry]:
    loaded = load(sample_dbs, tmp_path)
    yield loaded
    loaded.close()


def _ada(db: Database, settings: Settings, registry: Registry) -> RunContext:
    keyring = load_keyring(settings)
    identities = Identities.of([parse_identity("email", "ada@example.com")])
    request = submit(
        db,
        settings,
        keyring,
        Submission(RequestKind.ERASURE, identities),
        sources=registry.sources,
        operator="alice",
        now=NOW,
        dispatcher=RecordingDispatcher(),
    )
    with db.session() as session:
        subject = session.get_one(DsrRequest, request.id).subject
    return RunContext(
        settings=settings,
        db=db,
        keyring=keyring,
        sources=registry.sources,
        request_id=request.id,
        subject=subject,
        identities=load_identities(db, keyring, request.id),
        clock=lambda: NOW,
    )


def _agrees(receipt: dict[str, Any], facts: Any) -> dict[str, int]:
    """Assert the receipt's totals are the sums of its sources and of its lines; return them."""
    totals = {key: receipt[key] for key in COUNT_KEYS}
    for key in COUNT_KEYS:
        assert totals[key] == sum(entry[key] for entry in receipt["sources"])
    assert {key: sum(_sums(e)[key] for e in receipt["sources"]) for key in COUNT_KEYS} == totals
    summary = summarise(receipt, facts)
    assert {key: summary.total(key) for key in COUNT_KEYS} == totals
    return totals


def test_an_erasures_totals_agree_with_its_lines(
    db: Database, settings: Settings, registry: Registry
) -> None:
    receipt = run_erasure(_ada(db, settings, registry))
    facts = {source.name: location_facts(source) for source in registry.sources}
    assert _agrees(receipt, facts) == {"deleted": 18, "anonymized": 2, "retained": 1}


def test_a_retry_after_residue_keeps_the_totals_and_the_lines_together(
    db: Database, settings: Settings, registry: Registry, sample_dbs: SampleDatabases
) -> None:
    """A login recorded after the shop was erased is found by verification; the retry
    erases it, and the receipt says so in a line of its own."""
    ctx = _ada(db, settings, registry)
    source = registry.get("shop")
    original = source.verify
    engine = create_engine(sample_dbs.shop_url)

    def late_login(identities: Any) -> Any:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO activity_log (id, actor_email, action, at)"
                    " VALUES (99, 'ada@example.com', 'login', '2025-06-01 12:00:00')"
                )
            )
        source.verify = original  # type: ignore[method-assign]
        return original(identities)

    source.verify = late_login  # type: ignore[method-assign]
    try:
        with pytest.raises(ResidualDataError):
            run_erasure(ctx)
        receipt = run_erasure(ctx)
    finally:
        source.verify = original  # type: ignore[method-assign]
        engine.dispose()
    assert _agrees(receipt, {})["deleted"] == 19
    shop = next(entry for entry in receipt["sources"] if entry["source"] == "shop")
    found = [loc for loc in shop["locations"] if loc.get("note") == FOUND_WHILE_ERASING]
    assert [loc["deleted"] for loc in found] == [1]
