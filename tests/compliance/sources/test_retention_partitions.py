"""Whole-partition retention on PostgreSQL: detect, list, detach, drop after the grace
period, reattach; and `gdpr sources check` counting a detached partition for its parent."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, text

from compliance.errors import NotFoundError, SourceUnavailableError, UnsupportedError
from compliance.sources.check import find_gaps
from compliance.sources.sql.partitions import (
    Partition,
    detach,
    detached,
    drop_expired,
    due_partitions,
    holds_rows,
    partition_rows,
    partitions,
    range_partitioned,
    reattach,
)
from tests.compliance.sources.sqlsample import load
from tests.sample_app.fixtures import SampleDatabases

NOW = datetime(2026, 5, 10, 3, 0, tzinfo=UTC)
CUTOFF = datetime(2026, 3, 10, tzinfo=UTC)  # Jan and Feb (and older) are wholly before it


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def events(engine: Engine) -> Iterator[str]:
    """`events_<hex>`, monthly by RANGE (created_at): older than 2026, Jan to Apr 2026, one
    row in each (user 1 in January and March, user 2 elsewhere)."""
    name = f"events_{secrets.token_hex(4)}"
    months = [("01", "02"), ("02", "03"), ("03", "04"), ("04", "05")]
    run(
        engine,
        f"CREATE TABLE {name} (id INTEGER NOT NULL, user_id INTEGER NOT NULL,"
        " created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (id, created_at))"
        " PARTITION BY RANGE (created_at)",
        f"CREATE TABLE {name}_old PARTITION OF {name}"
        " FOR VALUES FROM (MINVALUE) TO ('2026-01-01 00:00:00+00')",
        *(
            f"CREATE TABLE {name}_2026_{a} PARTITION OF {name}"
            f" FOR VALUES FROM ('2026-{a}-01 00:00:00+00') TO ('2026-{b}-01 00:00:00+00')"
            for a, b in months
        ),
        f"INSERT INTO {name} VALUES (1, 2, '2025-11-20 00:00:00+00'),"
        " (2, 1, '2026-01-15 00:00:00+00'), (3, 2, '2026-02-15 00:00:00+00'),"
        " (4, 1, '2026-03-15 00:00:00+00'), (5, 2, '2026-04-15 00:00:00+00')",
    )
    yield name
    drop_like(engine, name)


def run(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:  # as written: a ":x" or "%s" in a name is no parameter
        for statement in statements:
            conn.exec_driver_sql(statement, execution_options={"no_parameters": True})


def drop_like(engine: Engine, prefix: str) -> None:
    """Drop every table whose name starts with `prefix` (the parent, detached partitions)."""
    with engine.begin() as conn:
        names = conn.execute(
            text("SELECT quote_ident(tablename) FROM pg_tables WHERE starts_with(tablename, :p)"),
            {"p": prefix},
        ).scalars()
        for name in names:
            conn.exec_driver_sql(
                f"DROP TABLE IF EXISTS {name} CASCADE", execution_options={"no_parameters": True}
            )


def rows(engine: Engine, table: str) -> list[int]:
    with engine.connect() as conn:
        quoted = '"' + table.replace('"', '""') + '"'
        query = f"SELECT id FROM {quoted} ORDER BY id"
        return list(
            conn.exec_driver_sql(query, execution_options={"no_parameters": True}).scalars()
        )


def listed(engine: Engine, table: str) -> list[Partition]:
    with engine.connect() as conn:
        return partitions(conn, None, table)


def detach_due(engine: Engine, table: str, now: datetime = NOW) -> list[str]:
    due = due_partitions(listed(engine, table), CUTOFF)
    for partition in due:
        detach(
            engine,
            None,
            table,
            partition,
            policy="shop.events",
            now=now,
            grace_days=7,
            lock_timeout_ms=2000,
        )
    return [p.name for p in due]


def comment(engine: Engine, table: str) -> str | None:
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT obj_description(to_regclass(:t), 'pg_class')"), {"t": table}
        ).scalar()
    return None if value is None else str(value)


# --- detection ------------------------------------------------------------------------------


def test_a_table_range_partitioned_on_the_policy_column_is_detected(
    engine: Engine, events: str
) -> None:
    with engine.connect() as conn:
        assert range_partitioned(conn, None, events, "created_at")
        assert range_partitioned(conn, "public", events, "created_at")
        assert not range_partitioned(conn, None, events, "id")
        assert not range_partitioned(conn, "elsewhere", events, "created_at")


def test_plain_tables_and_tables_partitioned_otherwise_are_not_range_partitioned(
    engine: Engine,
) -> None:
    name = f"other_{secrets.token_hex(4)}"
    run(
        engine,
        f"CREATE TABLE {name}_plain (id INTEGER, created_at TIMESTAMPTZ)",
        f"CREATE TABLE {name}_by_id (id INTEGER, created_at TIMESTAMPTZ) PARTITION BY RANGE (id)",
        f"CREATE TABLE {name}_by_list (id INTEGER, created_at TIMESTAMPTZ)"
        " PARTITION BY LIST (created_at)",
        f"CREATE TABLE {name}_two (id INTEGER, created_at TIMESTAMPTZ)"
        " PARTITION BY RANGE (created_at, id)",
        f"CREATE TABLE {name}_expr (id INTEGER, created_at TIMESTAMP)"
        " PARTITION BY RANGE ((created_at::date))",
        f"CREATE TABLE {name}_int (id INTEGER, created_at BIGINT) PARTITION BY RANGE (created_at)",
    )
    try:
        with engine.connect() as conn:
            for kind in ("plain", "by_id", "by_list", "two", "expr", "int", "missing"):
                assert not range_partitioned(conn, None, f"{name}_{kind}", "created_at"), kind
    finally:
        drop_like(engine, name)


def test_sqlite_is_never_range_partitioned(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        run(engine, "CREATE TABLE events (id INTEGER, created_at TIMESTAMP)")
        with engine.connect() as conn:
            assert not range_partitioned(conn, None, "events", "created_at")
        with pytest.raises(UnsupportedError, match="PostgreSQL"):
            drop_expired(engine, None, "events", NOW, 1000)
    finally:
        engine.dispose()


# --- bounds ---------------------------------------------------------------------------------


def test_partitions_are_listed_by_low_bound_with_open_bounds_and_default_as_none(
    pg_url: str, events: str
) -> None:
    # A session in New York sees the bounds in its own offset: they still come back UTC.
    engine = create_engine(pg_url, connect_args={"options": "-c TimeZone=America/New_York"})
    try:
        run(engine, f"CREATE TABLE {events}_rest PARTITION OF {events} DEFAULT")
        found = listed(engine, events)
    finally:
        engine.dispose()
    assert [(p.name, p.low, p.high, p.is_default) for p in found] == [
        (f"{events}_old", None, utc(2026, 1, 1), False),
        (f"{events}_2026_01", utc(2026, 1, 1), utc(2026, 2, 1), False),
        (f"{events}_2026_02", utc(2026, 2, 1), utc(2026, 3, 1), False),
        (f"{events}_2026_03", utc(2026, 3, 1), utc(2026, 4, 1), False),
        (f"{events}_2026_04", utc(2026, 4, 1), utc(2026, 5, 1), False),
        (f"{events}_rest", None, None, True),
    ]
    assert {p.schema for p in found} == {"public"}
    assert all(p.low is None or p.low.tzinfo is UTC for p in found)


def test_bounds_of_timestamps_without_time_zone_and_of_dates_are_taken_as_utc(
    engine: Engine,
) -> None:
    name = f"visits_{secrets.token_hex(4)}"
    run(
        engine,
        f"CREATE TABLE {name} (id INTEGER, at TIMESTAMP NOT NULL) PARTITION BY RANGE (at)",
        f"CREATE TABLE {name}_05 PARTITION OF {name} FOR VALUES FROM ('2025-05-01') TO"
        " ('2025-06-01 12:30:00')",
        f"CREATE TABLE {name}_06 PARTITION OF {name} FOR VALUES FROM ('2025-06-01 12:30:00')"
        " TO (MAXVALUE)",
        f"CREATE TABLE {name}_days (id INTEGER, on_day DATE NOT NULL) PARTITION BY RANGE (on_day)",
        f"CREATE TABLE {name}_days_05 PARTITION OF {name}_days FOR VALUES FROM ('2025-05-01')"
        " TO ('2025-06-01')",
    )
    try:
        assert [(p.low, p.high) for p in listed(engine, name)] == [
            (utc(2025, 5, 1), utc(2025, 6, 1, 12, 30)),
            (utc(2025, 6, 1, 12, 30), None),
        ]
        [day] = listed(engine, f"{name}_days")
        assert (day.low, day.high) == (utc(2025, 5, 1), utc(2025, 6, 1))
        with engine.connect() as conn:
            assert range_partitioned(conn, None, name, "at")
            assert range_partitioned(conn, None, f"{name}_days", "on_day")
    finally:
        drop_like(engine, name)


def test_due_partitions_are_those_ending_at_or_before_the_cutoff_never_the_default() -> None:
    parts = [
        Partition("old", "public", None, utc(2026, 1, 1)),
        Partition("jan", "public", utc(2026, 1, 1), utc(2026, 2, 1)),
        Partition("feb", "public", utc(2026, 2, 1), utc(2026, 3, 1)),
        Partition("mar", "public", utc(2026, 3, 1), None),
        Partition("rest", "public", None, None, is_default=True),
    ]
    assert [p.name for p in due_partitions(parts, utc(2026, 3, 1))] == ["old", "jan", "feb"]
    assert [p.name for p in due_partitions(parts, utc(2026, 2, 28))] == ["old", "jan"]
    assert due_partitions(parts, datetime(2025, 12, 31)) == []  # naive: taken as UTC


# --- detach ---------------------------------------------------------------------------------


def test_detach_takes_only_partitions_wholly_past_the_cutoff_out_of_the_parent(
    engine: Engine, events: str
) -> None:
    assert detach_due(engine, events) == [f"{events}_old", f"{events}_2026_01", f"{events}_2026_02"]
    assert [p.name for p in listed(engine, events)] == [f"{events}_2026_03", f"{events}_2026_04"]
    assert rows(engine, events) == [4, 5]  # March straddles the cutoff: the row path's
    assert rows(engine, f"{events}_2026_01") == [2]  # detached, not yet dropped


def test_a_detached_partition_records_when_why_and_until_when_in_its_comment(
    engine: Engine, events: str
) -> None:
    detach_due(engine, events)
    assert comment(engine, f"{events}_2026_01") == (
        "gdpr-retention detached-at=2026-05-10T03:00:00+00:00"
        " drop-after=2026-05-17T03:00:00+00:00 policy=shop.events"
        f" parent=public.{events}"
        " bounds=2026-01-01T00:00:00+00:00..2026-02-01T00:00:00+00:00"
    )
    assert comment(engine, f"{events}_old") is not None
    assert "bounds=MINVALUE..2026-01-01T00:00:00+00:00" in (comment(engine, f"{events}_old") or "")
    assert comment(engine, f"{events}_2026_03") is None
    with engine.connect() as conn:
        found = detached(conn, None, events)
    assert [(d.name, d.schema, d.bounds) for d in found] == [
        (f"{events}_old", "public", (None, utc(2026, 1, 1))),
        (f"{events}_2026_01", "public", (utc(2026, 1, 1), utc(2026, 2, 1))),
        (f"{events}_2026_02", "public", (utc(2026, 2, 1), utc(2026, 3, 1))),
    ]
    assert {(d.detached_at, d.drop_after, d.policy) for d in found} == {
        (NOW, NOW + timedelta(days=7), "shop.events")
    }


def test_detaching_twice_is_harmless(engine: Engine, events: str) -> None:
    [old, jan, feb] = due_partitions(listed(engine, events), CUTOFF)
    detach_due(engine, events)
    before = comment(engine, f"{events}_2026_01")
    later = NOW + timedelta(days=1)
    for partition in (old, jan, feb):
        detach(
            engine,
            None,
            events,
            partition,
            policy="shop.events",
            now=later,
            grace_days=7,
            lock_timeout_ms=2000,
        )
    assert comment(engine, f"{events}_2026_01") == before  # the first detachment stands
    assert rows(engine, events) == [4, 5]


def test_a_default_partition_is_never_detached(engine: Engine, events: str) -> None:
    run(engine, f"CREATE TABLE {events}_rest PARTITION OF {events} DEFAULT")
    default = listed(engine, events)[-1]
    assert default.is_default
    with pytest.raises(UnsupportedError, match="never detached"):
        detach(
            engine,
            None,
            events,
            default,
            policy="p",
            now=NOW,
            grace_days=7,
            lock_timeout_ms=2000,
        )
    assert listed(engine, events)[-1] == default


def test_a_lock_timeout_while_detaching_is_retryable_and_changes_nothing(
    engine: Engine, events: str
) -> None:
    [_, jan, _] = due_partitions(listed(engine, events), CUTOFF)
    with engine.connect() as busy:
        busy.execute(text(f"SELECT count(*) FROM {events}"))  # a reader holds its lock
        with pytest.raises(SourceUnavailableError, match="timed out"):
            detach(
                engine,
                None,
                events,
                jan,
                policy="p",
                now=NOW,
                grace_days=7,
                lock_timeout_ms=100,
            )
        busy.rollback()
    assert jan in listed(engine, events)
    assert comment(engine, jan.name) is None


# --- grace period, drop, reattach -----------------------------------------------------------


def test_a_detached_partition_survives_the_grace_period_and_is_dropped_after_it(
    engine: Engine, events: str
) -> None:
    detach_due(engine, events)
    assert drop_expired(engine, None, events, NOW + timedelta(days=6), 2000).partitions == ()
    assert rows(engine, f"{events}_2026_01") == [2]
    dropped = drop_expired(engine, None, events, NOW + timedelta(days=8), 2000)
    assert dropped.partitions == (
        f"public.{events}_old",
        f"public.{events}_2026_01",
        f"public.{events}_2026_02",
    )
    assert dropped.rows == 3
    with engine.connect() as conn:
        assert detached(conn, None, events) == []
        assert (
            conn.execute(text("SELECT to_regclass(:t)"), {"t": f"{events}_2026_01"}).scalar()
            is None
        )
    assert rows(engine, events) == [4, 5]
    assert drop_expired(engine, None, events, NOW + timedelta(days=9), 2000).rows == 0


def test_drop_expired_keeps_a_partition_the_keep_hook_protects(engine: Engine, events: str) -> None:
    detach_due(engine, events)
    jan = f"{events}_2026_01"
    dropped = drop_expired(
        engine, None, events, NOW + timedelta(days=8), 2000, keep=lambda _c, d: d.name == jan
    )
    assert dropped.rows == 2
    with engine.connect() as conn:
        assert [d.name for d in detached(conn, None, events)] == [jan]


def test_reattach_restores_the_rows_through_the_parent_and_forgets_the_record(
    engine: Engine, events: str
) -> None:
    detach_due(engine, events)
    reattach(engine, None, events, f"{events}_2026_01")
    reattach(engine, "public", events, f"{events}_old")
    assert rows(engine, events) == [1, 2, 4, 5]
    assert comment(engine, f"{events}_2026_01") is None
    jan = next(p for p in listed(engine, events) if p.name == f"{events}_2026_01")
    assert (jan.low, jan.high) == (utc(2026, 1, 1), utc(2026, 2, 1))
    assert listed(engine, events)[0].low is None  # MINVALUE again
    reattach(engine, None, events, f"{events}_2026_01")  # already attached: nothing to do
    with pytest.raises(NotFoundError, match="no partition"):
        reattach(engine, None, events, f"{events}_nope")
    dropped = drop_expired(engine, None, events, NOW + timedelta(days=8), 2000)
    assert dropped.partitions == (f"public.{events}_2026_02",)
    assert rows(engine, events) == [1, 2, 4, 5]


def test_a_partition_attached_again_by_hand_is_never_dropped(engine: Engine, events: str) -> None:
    detach_due(engine, events)
    run(
        engine,
        f"ALTER TABLE {events} ATTACH PARTITION {events}_2026_01"
        " FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')",
    )
    assert comment(engine, f"{events}_2026_01") is not None  # the stale record is still there
    dropped = drop_expired(engine, None, events, NOW + timedelta(days=8), 2000)
    assert f"public.{events}_2026_01" not in dropped.partitions
    assert rows(engine, events) == [2, 4, 5]


def test_names_that_need_quoting_are_quoted(engine: Engine) -> None:
    parent = f"Events-{secrets.token_hex(4)}"
    child = f'{parent} "jan" :x %s'
    quoted_child = '"' + child.replace('"', '""') + '"'
    run(
        engine,
        f'CREATE TABLE "{parent}" (id INTEGER, created_at TIMESTAMPTZ NOT NULL)'
        " PARTITION BY RANGE (created_at)",
        f'CREATE TABLE {quoted_child} PARTITION OF "{parent}"'
        " FOR VALUES FROM ('2026-01-01 00:00:00+00') TO ('2026-02-01 00:00:00+00')",
        f"INSERT INTO \"{parent}\" VALUES (1, '2026-01-02 00:00:00+00')",
    )
    try:
        [jan] = listed(engine, parent)
        assert jan.name == child
        detach(
            engine,
            None,
            parent,
            jan,
            policy="it's ':o'clock %s",
            now=NOW,
            grace_days=0,
            lock_timeout_ms=2000,
        )
        assert rows(engine, parent) == []
        with engine.connect() as conn:
            [record] = detached(conn, None, parent)
        assert (record.name, record.policy) == (child, "it's_':o'clock_%s")
        reattach(engine, None, parent, child)
        assert rows(engine, parent) == [1]
    finally:
        drop_like(engine, parent)


# --- rows in a partition --------------------------------------------------------------------


def test_partition_rows_counts_a_partition_and_its_rows_matching_a_parent_condition(
    engine: Engine, events: str
) -> None:
    parent = Table(events, MetaData(), autoload_with=engine)
    [old, jan, feb] = due_partitions(listed(engine, events), CUTOFF)
    held = parent.c.user_id.in_([1])
    with engine.connect() as conn:
        assert partition_rows(conn, jan) == 1
        assert partition_rows(conn, jan, parent=parent, where=held) == 1
        assert partition_rows(conn, feb, parent=parent, where=held) == 0
        assert [holds_rows(conn, p, parent, held) for p in (old, jan, feb)] == [False, True, False]
    detach_due(engine, events)
    with engine.connect() as conn:
        [_, jan_detached, _] = detached(conn, None, events)
        assert holds_rows(conn, jan_detached, parent, held)
        assert not holds_rows(conn, jan_detached, parent, parent.c.created_at > CUTOFF)


# --- gdpr sources check ---------------------------------------------------------------------


def sample_events(dbs: SampleDatabases) -> Engine:
    """The shop's `events` (FK to users), monthly: May and June 2025; May detached."""
    engine = create_engine(dbs.shop_url)
    run(
        engine,
        "CREATE TABLE events (id INTEGER, user_id INTEGER REFERENCES users(id),"
        " at TIMESTAMPTZ NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
        "CREATE TABLE events_2025_05 PARTITION OF events"
        " FOR VALUES FROM ('2025-05-01 00:00:00+00') TO ('2025-06-01 00:00:00+00')",
        "CREATE TABLE events_2025_06 PARTITION OF events"
        " FOR VALUES FROM ('2025-06-01 00:00:00+00') TO ('2025-07-01 00:00:00+00')",
    )
    return engine


def shop_gaps(dbs: SampleDatabases, folder: Path, extra: str = "") -> list[tuple[str, str]]:
    registry = load(dbs, folder, extra)
    try:
        return [(g.location, g.reason) for g in find_gaps(registry.sources) if g.source == "shop"]
    finally:
        registry.close()


def test_sources_check_counts_a_detached_partition_for_its_parent(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    engine = sample_events(pg_sample_dbs)
    try:
        [may, _] = listed(engine, "events")
        detach(
            engine,
            None,
            "events",
            may,
            policy="shop.events",
            now=NOW,
            grace_days=7,
            lock_timeout_ms=2000,
        )
    finally:
        engine.dispose()
    assert shop_gaps(pg_sample_dbs, tmp_path) == [
        ("events", "references users (subject data); not in the manifest")
    ]
    extra = (
        "\n[sources.shop.tables.events]\n"
        'references = [{ columns = "user_id", table = "users", kind = "owned" }]\n'
    )
    assert shop_gaps(pg_sample_dbs, tmp_path, extra) == []


def test_sources_check_reports_a_partition_detached_by_hand(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    engine = sample_events(pg_sample_dbs)
    try:
        run(engine, "ALTER TABLE events DETACH PARTITION events_2025_05")
    finally:
        engine.dispose()
    assert [location for location, _ in shop_gaps(pg_sample_dbs, tmp_path)] == [
        "events",
        "events_2025_05",
    ]
