"""What `index.html` shows of a table: its first rows, as short readable text.

The package streams and the index is written last, so it keeps only a preview of each
table: the first `PREVIEW_ROWS` rows, each value as text of at most `VALUE_CHARS`
characters (nested values as indented "key: value" lines), and at most `PAGE_CHARS`
characters over the whole page: each cell's text and column name counts with the markup
around it (`CELL_CHARS`), so a page of tiny or empty cells is bounded too. The table's
files hold everything.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain, islice
from typing import Any

from exporters import writers

PREVIEW_ROWS = 50
VALUE_CHARS = 160
PAGE_CHARS = 1_000_000
CELL_CHARS = len("<td></td>")  # what a cell costs the page beyond its text
ELLIPSIS = "…"

# Control characters (but tab and newline) and the bidirectional overrides that could
# make a value read as something else.
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_WORDS = re.compile(r"[^\W_]+")
_FIELDS = re.compile(r"\{[^{}]*\}")
_CAPITALS = {"id": "ID", "ip": "IP", "url": "URL", "uuid": "UUID"}


@dataclass(frozen=True)
class Preview:
    """The first rows of a table as display text (columns in order of appearance)."""

    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    shortened: bool = False  # at least one value was cut to fit the page
    cut_short: bool = False  # the page's budget ran out before the row cap


class Budget:
    """Characters the tables of the whole page may still take (cells and headings)."""

    def __init__(self, chars: int = PAGE_CHARS) -> None:
        self.left = chars


def take_preview(
    rows: Iterable[Mapping[str, Any]], budget: Budget
) -> tuple[Preview, Iterator[Mapping[str, Any]]]:
    """The preview of `rows` and the rows themselves, still whole and in order (the
    first `PREVIEW_ROWS` are read ahead; the rest still streams)."""
    source = iter(rows)
    head = list(islice(source, PREVIEW_ROWS))
    return _preview(head, budget), chain(head, source)


def _preview(head: list[Mapping[str, Any]], budget: Budget) -> Preview:
    named = [{str(key): value for key, value in row.items()} for row in head]
    columns = tuple(dict.fromkeys(key for row in named for key in row))
    header = _cost(columns)
    if head and header > budget.left:
        return Preview(cut_short=True)
    kept: list[tuple[str, ...]] = []
    shortened = False
    for row in named:
        cells = [cell(row.get(column)) for column in columns]
        texts = tuple(text for text, _ in cells)
        cost = _cost(texts) + (0 if kept else header)
        if cost > budget.left:
            return Preview(columns if kept else (), tuple(kept), shortened, cut_short=True)
        budget.left -= cost
        kept.append(texts)
        shortened = shortened or any(cut for _, cut in cells)
    return Preview(columns, tuple(kept), shortened)


def _cost(texts: Iterable[str]) -> int:
    return sum(len(text) + CELL_CHARS for text in texts)


def cell(value: Any, limit: int = VALUE_CHARS) -> tuple[str, bool]:
    """A value as text of at most `limit` characters, and whether it was cut."""
    text = ""
    for piece in _pieces(value, 0):
        text += piece
        if len(text) > limit:
            return text[: limit - 1].rstrip() + ELLIPSIS, True
    return text, False


def _pieces(value: Any, depth: int) -> Iterator[str]:
    """The text of a value in pieces (nested values line by line, lazily, so a huge
    value costs only what is shown)."""
    if isinstance(value, Mapping):
        yield from _mapping(value, depth)
    elif isinstance(value, set | frozenset):  # no order of its own: a stable one
        yield from _sequence(sorted(islice(value, VALUE_CHARS), key=str), depth)
    elif isinstance(value, list | tuple):
        yield from _sequence(value, depth)
    else:
        yield scalar(value)


def _nested(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple | set | frozenset) and bool(value)


def _mapping(value: Mapping[Any, Any], depth: int) -> Iterator[str]:
    pad = "  " * depth
    for number, (key, item) in enumerate(value.items()):
        yield ("\n" if number else "") + f"{pad}{scalar(key)}:"
        if _nested(item):
            yield "\n"
            yield from _pieces(item, depth + 1)
        elif text := scalar(item):
            yield " " + text


def _sequence(items: Iterable[Any], depth: int) -> Iterator[str]:
    values = list(islice(items, VALUE_CHARS))  # more cannot fit
    if not any(map(_nested, values)):
        yield "  " * depth + ", ".join(scalar(item) for item in values)
        return
    for number, item in enumerate(values):
        nested = _nested(item)
        yield ("\n" if number else "") + "  " * depth + ("-\n" if nested else "- ")
        yield from _pieces(item, depth + 1 if nested else 0)


def scalar(value: Any) -> str:
    """One plain value as a reader would write it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, str):
        return _INVISIBLE.sub("", value[: VALUE_CHARS * 4])
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return _moment(value)
    if isinstance(value, dt.date):
        return f"{value.day} {value:%B %Y}"
    if isinstance(value, dt.time):
        return value.isoformat(timespec="seconds" if value.second else "minutes")
    if isinstance(value, bytes | bytearray | memoryview):
        return f"(binary data, {human_size(len(value))})"
    normal = writers.normalise(value)
    if isinstance(normal, Mapping | list):
        return "".join(_pieces(normal, 0))
    return scalar(normal) if isinstance(normal, str | int | float) else str(normal)


def _moment(value: dt.datetime) -> str:
    text = f"{value.day} {value:%B %Y}, {value:%H:%M}"
    offset = value.utcoffset()
    if offset is None:
        return text
    return f"{text} UTC" if not offset else f"{text} (UTC{value:%z})"


def humanise(name: str) -> str:
    """A name for people: ``order_items`` -> "Order items", ``cart:{user_id}`` -> "Cart"."""
    words = _WORDS.findall(_FIELDS.sub(" ", name))
    if not words:
        return name
    phrase = " ".join(_CAPITALS.get(word.lower(), word) for word in words)
    return phrase[:1].upper() + phrase[1:]


def human_size(size: int) -> str:
    """A byte count as "512 bytes", "1.2 KB", "3.4 MB"."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover
