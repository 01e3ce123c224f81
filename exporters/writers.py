"""Row encoders for the package: machine-readable JSON and spreadsheet-friendly CSV.

JSON (Art. 20): dates and times in ISO 8601, decimals as exact strings, bytes as base64,
everything else as its natural JSON type. CSV: one column per field seen in any row,
nested values as JSON text, and text that a spreadsheet would run as a formula prefixed
with an apostrophe (the JSON keeps the exact value).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import enum
import io
import json
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

_UNSAFE_SEGMENT = re.compile(r'[\x00-\x1f\x7f\\/:*?"<>|]')
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


_PLAIN = frozenset({str, int, bool, type(None)})
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def normalise(value: Any) -> Any:
    """A JSON-ready form of one value, exact and unambiguous."""
    if type(value) in _PLAIN or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return normalise(value.value)
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return normalise(dataclasses.asdict(value))
    if isinstance(value, list | tuple | set | frozenset):
        return [normalise(v) for v in value]
    return str(value)


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k if type(k) is str else str(k): v if type(v) in _PLAIN else normalise(v)
        for k, v in row.items()
    }


def json_line(row: Mapping[str, Any]) -> bytes:
    return _ENCODER.encode(row).encode()


def json_array(rows: Iterable[bytes]) -> Iterator[bytes]:
    """Encoded rows as a JSON array, written incrementally (one row per line)."""
    yield b"["
    sep = b"\n"
    for row in rows:
        yield sep + row
        sep = b",\n"
    yield b"\n]\n"


def csv_cell(value: Any) -> str:
    if type(value) is str and not value.startswith(_FORMULA_START):
        return value
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text  # keep spreadsheets from executing it as a formula
    return text


def csv_rows(columns: list[str], rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """A UTF-8 CSV (with BOM, for spreadsheets): header then one line per row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    yield b"\xef\xbb\xbf" + _drain(out)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
        if out.tell() >= 64 * 1024:
            yield _drain(out)
    yield _drain(out)


def _drain(out: io.StringIO) -> bytes:
    data = out.getvalue().encode()
    out.seek(0)
    out.truncate()
    return data


def safe_segment(text: str) -> str:
    """One path segment safe inside a ZIP on any OS."""
    cleaned = _UNSAFE_SEGMENT.sub("_", text).strip().lstrip(".")
    return cleaned[:120] or "_"


def safe_path(path: str) -> str:
    """A relative path with no '..', absolute parts or unsafe characters."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in {"", ".", ".."}]
    return "/".join(safe_segment(p) for p in parts) or "_"
