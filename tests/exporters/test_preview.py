"""What the index shows of a table: the first rows as short text, within the page's budget."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from exporters.preview import (
    CELL_CHARS,
    ELLIPSIS,
    PREVIEW_ROWS,
    VALUE_CHARS,
    Budget,
    cell,
    humanise,
    scalar,
    take_preview,
)


def numbered(count: int) -> list[dict[str, Any]]:
    return [{"id": n, "note": f"row {n}"} for n in range(count)]


def test_a_preview_keeps_the_first_rows_and_passes_every_row_on_whole_and_in_order() -> None:
    rows = numbered(PREVIEW_ROWS + 70)
    preview, rest = take_preview(iter(rows), Budget())
    assert preview.columns == ("id", "note")
    assert preview.rows == tuple((str(n), f"row {n}") for n in range(PREVIEW_ROWS))
    passed = list(rest)
    assert passed == rows
    assert all(a is b for a, b in zip(passed, rows, strict=True))
    assert not preview.shortened and not preview.cut_short


def test_a_preview_reads_only_its_rows_ahead_and_the_rest_keeps_streaming() -> None:
    read: list[int] = []

    def rows() -> Iterator[dict[str, Any]]:
        for n in range(PREVIEW_ROWS * 3):
            read.append(n)
            yield {"id": n}

    preview, rest = take_preview(rows(), Budget())
    assert len(read) == PREVIEW_ROWS == len(preview.rows)
    assert next(rest) == {"id": 0}
    assert sum(1 for _ in rest) == PREVIEW_ROWS * 3 - 1


def test_columns_follow_their_first_appearance_and_missing_values_are_empty() -> None:
    preview, _ = take_preview([{"id": 1, "email": "a@x"}, {"id": 2, "city": "York"}], Budget())
    assert preview.columns == ("id", "email", "city")
    assert preview.rows == (("1", "a@x", ""), ("2", "", "York"))


def test_a_table_with_no_rows_has_an_empty_preview() -> None:
    preview, rest = take_preview(iter([]), Budget())
    assert preview.rows == () and preview.columns == () and not preview.cut_short
    assert list(rest) == []


def test_a_long_value_is_cut_to_the_cap_with_an_ellipsis_and_says_so() -> None:
    preview, rest = take_preview([{"bio": "word " * 400}], Budget())
    (shown,) = preview.rows[0]
    assert len(shown) <= VALUE_CHARS and shown.endswith(ELLIPSIS)
    assert preview.shortened
    assert next(rest)["bio"] == "word " * 400  # the row itself is untouched


def test_the_budget_is_shared_by_the_whole_page_and_never_overdrawn() -> None:
    heading, row = 4 + CELL_CHARS, 100 + CELL_CHARS
    budget = Budget(1100)
    first, _ = take_preview([{"text": "x" * 100}] * 20, budget)
    assert len(first.rows) == 9  # 1100 leaves room for the heading and 9 rows
    assert first.cut_short and first.columns == ("text",)
    assert budget.left == 1100 - heading - 9 * row
    small, _ = take_preview([{"text": "y" * 10}], budget)  # what still fits is shown
    assert small.rows == (("y" * 10,),) and not small.cut_short
    large, _ = take_preview([{"text": "z" * 100}], budget)
    assert large.cut_short and large.rows == () and large.columns == ()
    assert budget.left == 1100 - heading - 9 * row - heading - (10 + CELL_CHARS)


def test_empty_cells_and_column_names_count_against_the_budget() -> None:
    wide = {f"c{n:03}": None for n in range(1000)}
    heading, row = 1000 * (4 + CELL_CHARS), 1000 * CELL_CHARS
    budget = Budget(heading + 2 * row + 1)
    preview, _ = take_preview([wide] * PREVIEW_ROWS, budget)
    assert len(preview.rows) == 2 and preview.cut_short
    assert budget.left == 1
    narrow, _ = take_preview([{"id": 1}], Budget(CELL_CHARS))
    assert narrow.cut_short and narrow.rows == ()  # its heading alone does not fit


def test_values_read_as_a_person_would_write_them() -> None:
    assert scalar(None) == ""
    assert scalar(True) == "Yes" and scalar(False) == "No"
    assert scalar(Decimal("10.10")) == "10.10"
    assert scalar(dt.date(1815, 12, 10)) == "10 December 1815"
    assert scalar(dt.datetime(2026, 1, 31, 9, 5, tzinfo=dt.UTC)) == "31 January 2026, 09:05 UTC"
    plus_one = dt.timezone(dt.timedelta(hours=1))
    assert scalar(dt.datetime(2026, 1, 31, 9, 5, tzinfo=plus_one)) == (
        "31 January 2026, 09:05 (UTC+0100)"
    )
    assert scalar(dt.datetime(2026, 1, 31, 9, 5)) == "31 January 2026, 09:05"
    assert scalar(dt.time(9, 30)) == "09:30"
    assert scalar(b"\x89PNG") == "(binary data, 4 bytes)"


def test_control_and_direction_override_characters_are_dropped() -> None:
    assert scalar("evil\u202egnp.exe\x00\x1b[31m") == "evilgnp.exe[31m"
    assert scalar("two\nlines\tand a tab") == "two\nlines\tand a tab"


def test_nested_values_read_as_indented_lines() -> None:
    value = {"address": {"city": "York", "lines": ["2 Ada Street", "Flat 1"]}, "tags": []}
    assert cell(value) == (
        "address:\n  city: York\n  lines:\n    2 Ada Street, Flat 1\ntags:",
        False,
    )
    assert cell([{"sku": 1}, {"sku": 2}]) == ("-\n  sku: 1\n-\n  sku: 2", False)


def test_a_huge_nested_value_costs_only_what_is_shown() -> None:
    text, cut = cell({"n": list(range(1_000_000))})
    assert cut and len(text) <= VALUE_CHARS


@pytest.mark.parametrize(
    ("name", "readable"),
    [
        ("order_items", "Order items"),
        ("cart:{user_id}", "Cart"),
        ("user_id", "User ID"),
        ("ip", "IP"),
        ("activity-log", "Activity log"),
        ("___", "___"),
    ],
)
def test_names_are_made_readable(name: str, readable: str) -> None:
    assert humanise(name) == readable
