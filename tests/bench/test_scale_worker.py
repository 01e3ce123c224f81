"""The counters of bench/scale_worker.py: what the worker writes, what the bench reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench import scale_worker
from bench.scale_worker import Snapshot, Totals
from tests.support.services import pg_database


def write(
    folder: Path, pid: int, sql: dict[str, list[float]], tasks: dict[str, list[float]]
) -> None:
    shapes = {f"{db}: SELECT 1": v for db, v in sql.items()}
    found = {"sql": sql, "shapes": shapes, "tasks": tasks}
    (folder / f"{pid}.json").write_text(json.dumps(found))


def test_a_snapshot_sums_every_process_and_subtracts_an_earlier_one(tmp_path: Path) -> None:
    write(tmp_path, 1, {"shop": [3, 0.5]}, {"run": [1, 1.0]})
    write(tmp_path, 2, {"shop": [2, 0.25], "control": [4, 0.1]}, {"run": [1, 2.0]})
    (tmp_path / ".2.tmp").write_text("half-written")  # a write in progress is not read
    earlier = Snapshot.read(tmp_path)
    assert earlier.sql == {"shop": [5, 0.75], "control": [4, 0.1]}
    write(tmp_path, 1, {"shop": [10, 1.5]}, {"run": [2, 3.0]})
    later = Snapshot.read(tmp_path).minus(earlier)
    assert later.sql == {"shop": [7, 1.0], "control": [0, 0.0]}
    assert later.tasks == {"run": [1, 2.0]}
    assert later.slowest("shop: ", 1) == [("SELECT 1", [7, 1.0])]


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with pg_database("scale_counters") as url:
        libpq = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(libpq) as found:
            yield found


@pytest.mark.postgres
def test_statements_and_their_fetches_are_counted_per_database_and_shape(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    totals = Totals()
    monkeypatch.setattr(scale_worker, "TOTALS", totals)
    for cls in (psycopg.Cursor, psycopg.ServerCursor):
        for name, statements in (("execute", 1), ("fetchall", 0)):
            wrapped = scale_worker._measured(cls.__dict__[name], statements)
            monkeypatch.setattr(cls, name, wrapped)
    conn.execute("SELECT %s::int", (7,)).fetchall()
    with conn.cursor(name="streamed") as cursor:
        cursor.execute("SELECT g   FROM\n generate_series(1, 3) g")
        assert len(cursor.fetchall()) == 3
    database = str(conn.info.dbname)
    assert totals.sql[database][0] == 2
    shapes = {key: count for key, (count, _) in totals.shapes.items()}
    assert shapes == {
        f"{database}: SELECT %s::int": 1,
        f"{database}: SELECT g FROM generate_series(1, 3) g": 1,
    }
    totals.write(tmp_path)
    assert Snapshot.read(tmp_path).sql == totals.sql
