"""Retention policies in the SQL manifest: validated at load with one line per mistake,
named by entry; fan-out by key range covers every key exactly once."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from compliance.errors import ManifestError
from compliance.retention import sweep
from compliance.retention.catalog import Catalog
from compliance.retention.policy import PolicyKind
from tests.compliance.retention.conftest import Harness
from tests.sample_app import retention as app

BASE = """\
[sources.app]
kind = "sql"
url = "{url}"

[sources.app.tables.users]
identities = {{ email = "email", id = "user_id" }}
"""


def _load(h: Harness, tables: str) -> None:
    h.manifest.write_text(BASE.format(url=h.url) + tables, encoding="utf-8")
    h.reload_from_file()


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            '[sources.app.tables.sessions]\nretention = { column = "created", days = 30 }',
            "sources.app.tables.sessions.retention: table 'sessions' has no column 'created'",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "user_id", days = 30 }',
            "column 'user_id' is INTEGER, not a date or timestamp",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at", days = 0 }',
            "sources.app.tables.sessions.retention: 'days' must be between 1 and",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at", days = -3 }',
            "'days' must be between 1 and",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at", days = 1.5 }',
            "'days' must be a whole number of days",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at" }',
            "missing required key 'days'",
        ),
        (
            "[sources.app.tables.ledger]\nlegal_retention_days = 3650\n"
            'retention = { column = "booked_at", days = 365 }',
            "shorter than the legal retention of 3650 days",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at", days = 30,'
            ' where = { kind = "x" } }',
            "where: table 'sessions' has no column 'kind'",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at", days = 30,'
            ' where = { user_id = { like = "%" } } }',
            "a condition is one of not, in, not_in, is_null",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at", days = 30,'
            ' scpoe = "rows" }',
            "sources.app.tables.sessions.retention: unknown key 'scpoe'",
        ),
        (
            '[sources.app.tables.sessions]\nretention = { column = "created_at", days = 30,'
            ' scope = "subject" }',
            "scope = 'subject' needs identity columns on 'sessions'",
        ),
        (
            '[sources.app.tables.users.retention]\ncolumn = "closed_at"\ndays = 30\n'
            "[sources.app.tables.sessions]",
            "rows of 'users' are referenced by ledger, sessions;",
        ),
    ],
)
def test_a_broken_policy_is_one_line_naming_its_entry(
    harness: Harness, tables: str, message: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        _load(harness, tables)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_policy_on_a_catalogue_others_only_link_to_is_refused(harness: Harness) -> None:
    engine = create_engine(harness.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE products (id integer PRIMARY KEY, added_at timestamp)"))
        conn.execute(
            text(
                "CREATE TABLE orders (id integer PRIMARY KEY, user_id integer REFERENCES"
                " users(id), product_id integer REFERENCES products(id))"
            )
        )
    engine.dispose()
    tables = (
        "[sources.app.tables.orders]\n"
        'references = [{ columns = "product_id", table = "products", kind = "link" }]\n'
        "[sources.app.tables.products]\n"
        'retention = { column = "added_at", days = 30 }\n'
    )
    with pytest.raises(ManifestError, match="target of a 'link' reference from orders"):
        _load(harness, tables)


def test_every_mistake_is_reported_at_once(harness: Harness) -> None:
    tables = (
        '[sources.app.tables.sessions]\nretention = { column = "nope", days = 30 }\n'
        '[sources.app.tables.activity]\nretention = { column = "kind", days = 30 }\n'
    )
    with pytest.raises(ManifestError) as caught:
        _load(harness, tables)
    assert len(caught.value.problems) == 2


def test_two_policies_on_one_table_get_their_column_in_the_name(harness: Harness) -> None:
    tables = (
        "[[sources.app.tables.users.retention]]\n"
        'column = "closed_at"\ndays = 365\nscope = "subject"\n'
        "[[sources.app.tables.users.retention]]\n"
        'column = "closed_at"\ndays = 1000\nscope = "subject"\nname = "dormant"\n'
    )
    _load(harness, tables)
    names = [e.policy.name for e in Catalog.of(harness.registry.sources)]
    assert names == ["app.users.closed_at", "dormant"]
    assert {e.policy.kind for e in Catalog.of(harness.registry.sources)} == {PolicyKind.SUBJECTS}


def test_a_big_table_fans_out_in_key_ranges_that_cover_every_key_once(harness: Harness) -> None:
    ctx = harness.ctx(retention_parts=3, retention_fanout_rows=10)
    started = sweep.start(ctx, "app.sessions", trigger="test")
    assert len(started.parts) == 3
    for part in started.parts:
        while sweep.work_part(ctx, part) == sweep.PartOutcome.MORE:
            pass
    run = sweep.runs.finish_run(ctx.store, started.run.id, actor="t", now=harness.now)
    assert run is None  # the last part closed the run already
    assert harness.keys("sessions") == set(range(1, app.USERS * 5 + 1)) - app.expired_sessions()
    [finished] = sweep.runs.history(ctx.store, "app.sessions", 1)
    assert finished.status == "completed"
    assert finished.counts["deleted"] == len(app.expired_sessions())
