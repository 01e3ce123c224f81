"""A row policy on a monthly range-partitioned PostgreSQL table: whole partitions past the
cutoff are detached (reversible for the grace period), then dropped; straddling months
lose rows one range at a time; a legal hold keeps its subject's partition attached."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from compliance import holds
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.holds import HoldScope
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.retention import sweep
from compliance.retention.sweep import SweepContext
from compliance.sources.registry import load_registry
from tests.sample_app.fixtures import app_database

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
MONTHS = ["2026-02", "2026-03", "2026-04", "2026-05", "2026-06", "2026-07"]

MANIFEST = """\
[sources.app]
kind = "sql"
url = "{url}"

[sources.app.tables.users]
identities = {{ email = "email", id = "user_id" }}

[sources.app.tables.visits]
key = ["id"]
retention = {{ column = "created_at", days = 30, grace_days = 7 }}
"""


@dataclass
class Setup:
    url: str
    ctx: SweepContext
    db: Database
    settings: Settings

    def visible(self) -> set[int]:
        return _ids(self.url, "SELECT id FROM visits")

    def tables(self) -> set[str]:
        engine = create_engine(self.url)
        with engine.connect() as conn:
            found = {
                r[0]
                for r in conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            }
        engine.dispose()
        return found

    def at(self, when: datetime) -> SweepContext:
        return SweepContext(
            self.ctx.settings,
            self.ctx.db,
            self.ctx.keyring,
            self.ctx.sources,
            self.ctx.requests,
            clock=lambda: when,
            owner=self.ctx.owner,
        )


def _ids(url: str, query: str) -> set[int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = {r[0] for r in conn.execute(text(query))}
    engine.dispose()
    return found


def _schema(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id int PRIMARY KEY, email text)"))
        conn.execute(
            text("INSERT INTO users VALUES (1, 'ann@example.com'), (2, 'ben@example.com')")
        )
        conn.execute(
            text(
                "CREATE TABLE visits (id int, user_id int REFERENCES users(id),"
                " created_at timestamptz, PRIMARY KEY (id, created_at))"
                " PARTITION BY RANGE (created_at)"
            )
        )
        for i, month in enumerate(MONTHS[:-1]):
            conn.execute(
                text(
                    f"CREATE TABLE visits_{month.replace('-', '_')} PARTITION OF visits"
                    f" FOR VALUES FROM ('{month}-01 00:00+00') TO ('{MONTHS[i + 1]}-01 00:00+00')"
                )
            )
        # per month: ann's visit on the 2nd, ben's on the 20th
        key = 0
        for month in MONTHS[:-1]:
            for user, day in ((1, "02"), (2, "20")):
                key += 1
                conn.execute(
                    text(f"INSERT INTO visits VALUES ({key}, {user}, '{month}-{day} 10:00+00')")
                )
    engine.dispose()


@pytest.fixture
def setup(tmp_path: Path, pg_settings: Settings) -> Iterator[Setup]:
    with app_database("postgres", tmp_path, "partitions") as url:
        _schema(url)
        manifest = tmp_path / "sources.toml"
        manifest.write_text(MANIFEST.format(url=url))
        settings = pg_settings.with_overrides(sources=str(manifest))
        db = Database.connect(settings)
        db.upgrade()
        keyring = load_keyring(settings)
        registry = load_registry(settings, environ=os.environ, pseudonym_key=keyring.pseudonym_key)
        ctx = SweepContext(
            settings, db, keyring, registry.sources, RecordingDispatcher(), clock=lambda: NOW
        )
        try:
            yield Setup(url, ctx, db, settings)
        finally:
            registry.close()
            db.dispose()


# cutoff = NOW - 30 days = 2026-05-16 12:00: Feb-Apr wholly past it; May straddles it.
FEB_TO_APR = {1, 2, 3, 4, 5, 6}
MAY_OLD = {7}  # ann's visit on 2026-05-02; ben's on 05-20 is fresh


def test_whole_months_are_detached_and_the_straddling_month_loses_rows(setup: Setup) -> None:
    run = sweep.run_inline(setup.ctx, "app.visits")
    assert setup.visible() == set(range(1, 11)) - FEB_TO_APR - MAY_OLD
    assert run.counts["detached"] == 6 and run.counts["deleted"] == 1
    assert {"visits_2026_02", "visits_2026_03", "visits_2026_04"} <= setup.tables()
    # within the grace period nothing is dropped
    sweep.run_inline(setup.at(NOW + timedelta(days=6)), "app.visits")
    assert "visits_2026_02" in setup.tables()
    late = sweep.run_inline(setup.at(NOW + timedelta(days=8)), "app.visits")
    assert not {"visits_2026_02", "visits_2026_03", "visits_2026_04"} & setup.tables()
    assert late.counts["dropped"] == 6


def test_a_held_subject_keeps_their_months_attached(setup: Setup) -> None:
    holds.add(
        setup.db,
        HoldScope(identities=Identities.of([parse_identity("email", "ann@example.com")])),
        pseudonym_key=setup.ctx.keyring.pseudonym_key,
        known_sources=["app"],
        reason="claim",
        basis="Art. 17(3)(e)",
        until=None,
        operator="dora",
        now=NOW,
    )
    [plan] = sweep.plan(setup.ctx, "app.visits")
    assert plan.held == 4 and plan.due == 3
    run = sweep.run_inline(setup.ctx, "app.visits")
    # ann's old visits (1, 3, 5, 7) stay; ben's old ones (2, 4, 6) go row by row
    assert setup.visible() == {1, 3, 5, 7, 8, 9, 10}
    assert run.counts["detached"] == 0 and run.counts["held"] == 4


def test_an_erasure_in_the_grace_period_clears_the_detached_partitions_too(
    setup: Setup,
) -> None:
    sweep.run_inline(setup.ctx, "app.visits")  # Feb-Apr detached, kept for 7 days
    [app_source] = setup.ctx.sources
    ann = Identities.of(
        [parse_identity("email", "ann@example.com"), parse_identity("user_id", "1")]
    )
    checkpoint: dict[str, object] = {}
    while True:
        result = app_source.erase(ann, checkpoint, 100)
        checkpoint = dict(result.checkpoint)
        if result.done:
            break
    detached = _ids(
        setup.url,
        "SELECT id FROM visits_2026_02 UNION ALL SELECT id FROM"
        " visits_2026_03 UNION ALL SELECT id FROM visits_2026_04",
    )
    assert detached == {2, 4, 6}  # ben's stay until the partitions are dropped; ann's are gone
    assert setup.visible() == {8, 10}  # ann's fresh May visit went with her, ben's stay
