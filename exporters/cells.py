"""Column-at-a-time encoding of table values: JSON texts and CSV cells in one pass.

A table's rows are transposed into columns; a column whose values all share one common
type (text, integers, timestamps...) is converted with one C-level `map` instead of a
Python call per value. Everything else goes value by value through the exact rules of
`exporters.writers` (normalise, then the CSV cell of the value as the JSON file holds
it), so the output is byte for byte what the per-row encoders produce.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from itertools import repeat
from json.encoder import encode_basestring
from typing import Any

from exporters import writers

Cells = tuple[list[str], list[str]]  # (JSON text of each value, CSV cell of each value)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def quote(cell: str) -> str:
    """A CSV field as `csv.writer` (excel dialect, minimal quoting) writes it."""
    if '"' in cell:
        return '"' + cell.replace('"', '""') + '"'
    if "," in cell or "\n" in cell or "\r" in cell:
        return '"' + cell + '"'
    return cell


def text_cell(value: str) -> str:
    """The CSV field of a text value; formulas get a leading apostrophe (like `csv_cell`)."""
    if value.startswith(_FORMULA_START):
        value = "'" + value
    return quote(value)


def _one_text(value: str) -> tuple[str, str]:
    return encode_basestring(value), text_cell(value)


def _one_int(value: int) -> tuple[str, str]:
    text = int.__repr__(value)
    return text, text


def _one_float(value: float) -> tuple[str, str]:
    if not math.isfinite(value):
        return _one_other(value)
    text = float.__repr__(value)
    return text, text


def _one_bool(value: bool) -> tuple[str, str]:
    return ("true", "true") if value else ("false", "false")


def _one_none(value: None) -> tuple[str, str]:
    return "null", ""


def _one_temporal(value: dt.date | dt.time) -> tuple[str, str]:
    return _one_text(value.isoformat())


def _one_other(value: Any) -> tuple[str, str]:
    """Any other value: the general rules, CSV taken from the JSON text as written."""
    text = _ENCODER.encode(writers.normalise(value))
    return text, quote(writers.csv_cell(json.loads(text)))


_ONE: dict[type, Callable[[Any], tuple[str, str]]] = {
    str: _one_text,
    int: _one_int,
    float: _one_float,
    bool: _one_bool,
    type(None): _one_none,
    dt.datetime: _one_temporal,
    dt.date: _one_temporal,
    dt.time: _one_temporal,
}


def _texts(values: Sequence[str]) -> Cells:
    texts = list(map(encode_basestring, values))
    joined = "".join(values)
    if "," in joined or '"' in joined or "\n" in joined or "\r" in joined:
        return texts, list(map(text_cell, values))
    if any(map(str.startswith, values, repeat(_FORMULA_START))):
        return texts, ["'" + v if v.startswith(_FORMULA_START) else v for v in values]
    return texts, list(values)  # nothing to quote or guard: the text is the cell


def _ints(values: Sequence[int]) -> Cells:
    texts = list(map(int.__repr__, values))
    return texts, texts


def _temporals(values: Sequence[Any]) -> Cells:
    # ISO 8601 text starts with a digit and holds no comma, quote or line break.
    iso = [value.isoformat() for value in values]
    return list(map(encode_basestring, iso)), iso


def _floats(values: Sequence[float]) -> Cells | None:
    if not all(map(math.isfinite, values)):
        return None
    texts = list(map(float.__repr__, values))
    return texts, texts


_COLUMN: dict[type, Callable[[Sequence[Any]], Cells | None]] = {
    str: _texts,
    int: _ints,
    float: _floats,
    dt.datetime: _temporals,
    dt.date: _temporals,
    dt.time: _temporals,
}


def column_cells(values: Sequence[Any]) -> Cells:
    """The JSON text and CSV cell of every value of one column."""
    kinds = set(map(type, values))
    if len(kinds) == 1:
        whole = _COLUMN.get(kinds.pop())
        done = whole(values) if whole else None
        if done is not None:
            return done
    pairs = [_ONE.get(type(value), _one_other)(value) for value in values]
    return [pair[0] for pair in pairs], [pair[1] for pair in pairs]
