"""Delete batches on PostgreSQL: one autocommitted statement on a held connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from compliance.sources.sql.batches import BatchCounts, Deleter
from compliance.sources.sql.source import SqlSource
from compliance.sources.sql.subject import Subject
from tests.compliance.sources.sqlsample import ada_resolved, keys, load
from tests.sample_app.fixtures import SampleDatabases


@contextmanager
def shop_deleter(dbs: SampleDatabases, folder: Path) -> Iterator[tuple[SqlSource, Deleter]]:
    """The sample shop source and a `Deleter` on it; the registry is closed after."""
    registry = load(dbs, folder)
    try:
        shop = registry.get("shop")
        assert isinstance(shop, SqlSource)
        yield shop, Deleter(shop)
    finally:
        registry.close()


def _setting(source: SqlSource) -> list[str]:
    """synchronous_commit of every connection the pool hands out."""
    conns = [source.engine.connect() for _ in range(2)]
    try:
        return [str(c.execute(text("SHOW synchronous_commit")).scalar_one()) for c in conns]
    finally:
        for conn in conns:
            conn.close()


def test_batches_before_a_tables_last_commit_asynchronously_and_the_pool_gets_its_setting_back(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    with shop_deleter(pg_sample_dbs, tmp_path) as (shop, deleter):
        ada = Subject(shop.graph, ada_resolved())
        assert shop.graph.fix_edges("sessions") == []
        assert deleter.delete(
            ada, "sessions", ["token"], [("s-ada-1",)], last=False
        ) == BatchCounts(1)
        held = deleter._held()
        assert held.execute(text("SHOW synchronous_commit")).scalar_one() == "off"
        assert deleter.delete(ada, "sessions", ["token"], [("s-ada-2",)], last=True) == BatchCounts(
            1
        )
        assert deleter._conn is None  # the last batch gave the connection back
        assert _setting(shop) == ["on", "on"]
    assert not keys(pg_sample_dbs.shop_url, "sessions") & {("s-ada-1",), ("s-ada-2",)}


def test_releasing_mid_table_restores_the_setting_and_discarding_closes_the_connection(
    pg_sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    with shop_deleter(pg_sample_dbs, tmp_path) as (shop, deleter):
        ada = Subject(shop.graph, ada_resolved())
        assert deleter.delete(
            ada, "sessions", ["token"], [("s-ada-1",)], last=False
        ) == BatchCounts(1)
        deleter.release()
        assert _setting(shop) == ["on", "on"]
        assert deleter.delete(
            ada, "sessions", ["token"], [("s-ada-2",)], last=False
        ) == BatchCounts(1)
        held = deleter._held()
        deleter.discard()
        assert held.closed
        again = deleter.delete(ada, "sessions", ["token"], [("s-ada-2",)], last=True)
        assert again == BatchCounts(0, missed=1)  # gone already: the eraser then checks
