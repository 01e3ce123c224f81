"""The one-pass table encoder writes exactly what the per-row JSON and CSV encoders write."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporters import writers
from exporters.tables import TableEncoder


class Colour(enum.IntEnum):
    RED = 1


def reference(rows: list[Mapping[Any, Any]]) -> tuple[bytes, bytes]:
    """The straightforward encoding: normalise each row, JSON it, CSV from the JSON."""
    columns: dict[str, None] = {}
    lines = []
    for row in rows:
        clean = writers.normalise_row(row)
        columns.update(dict.fromkeys(clean))
        lines.append(writers.json_line(clean))
    json_bytes = b"".join(writers.json_array(lines))
    csv_bytes = b"".join(writers.csv_rows(list(columns), (json.loads(x) for x in lines)))
    return json_bytes, csv_bytes


def encoded(rows: list[Mapping[Any, Any]]) -> tuple[bytes, bytes, int]:
    table = TableEncoder()
    try:
        json_bytes = b"".join(table.json_pieces(iter(rows)))
        return json_bytes, b"".join(table.csv_pieces()), table.rows
    finally:
        table.close()


tricky_text = st.sampled_from(
    ["", "=1+2", "-3", "@x", "\tab", "\rcr", 'say "hi"', "a,b", "l1\r\nl2", "l1\nl2", "%s", "é✓"]
)
values = st.one_of(
    st.text(),
    tricky_text,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    st.times(),
    st.decimals(allow_nan=False),
    st.binary(max_size=8),
    st.just(Colour.RED),
    st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
keys = st.one_of(st.sampled_from(["id", "name", "", "%d", 'q"', "a,b", "x\r\ny"]), st.just(7))
rows_strategy = st.lists(st.dictionaries(keys, values, max_size=5), max_size=150)


@settings(max_examples=300, deadline=None)
@given(rows_strategy)
def test_any_rows_encode_exactly_as_the_per_row_encoders_do(rows: list[dict[Any, Any]]) -> None:
    json_bytes, csv_bytes, count = encoded(rows)
    assert (json_bytes, csv_bytes) == reference(rows)
    assert count == len(rows)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(tricky_text, st.integers(), st.none()), min_size=1, max_size=200))
def test_uniform_columns_take_the_fast_path_with_the_same_bytes(
    cells: list[tuple[str, int, None]],
) -> None:
    rows = [{"text": t, "number": n, "nothing": z} for t, n, z in cells]
    assert encoded(rows)[:2] == reference(rows)


def test_a_column_that_appears_late_pads_records_spooled_to_disk() -> None:
    body = 'line "one",\r\nline two ' * 40
    rows: list[dict[str, Any]] = [
        {"id": i, "when": datetime(2026, 1, 1, 9, i % 60, tzinfo=UTC), "body": body}
        for i in range(6000)
    ]
    rows.insert(10, {"id": -1})  # a narrower row in between
    rows.append({"id": 6000, "late": date(2026, 2, 1), "at": time(9, 30)})
    rows.append({"only": ""})
    json_bytes, csv_bytes, count = encoded(rows)
    assert len(csv_bytes) > 4 * 1024 * 1024  # well past the spool's in-memory limit
    assert (json_bytes, csv_bytes) == reference(rows)
    assert count == len(rows)


def test_rows_with_one_or_no_column_keep_csv_writer_quoting() -> None:
    rows: list[dict[str, Any]] = [{}, {"a": ""}, {"a": None}, {}, {"a": "x"}, {"b": Decimal("1")}]
    for cut in range(len(rows) + 1):
        assert encoded(rows[:cut])[:2] == reference(rows[:cut])
