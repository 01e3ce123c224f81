"""Single values of a SQL source: identity strings coerced to a column's type, keys in
and out of a JSON checkpoint, anonymised values and the test for them."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, String

from compliance.sources.sqlrules import HMAC_LENGTH, REDACTED, Strategy

_INT = re.compile(r"^-?[0-9]{1,19}$")
_HMAC = re.compile(rf"^[0-9a-f]{{{HMAC_LENGTH}}}$")


def _python_type(column: Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def coerce(column: Column[Any], value: str) -> Any | None:
    """`value` as a value of `column`, or None if it cannot be one."""
    kind = _python_type(column)
    if kind is int:
        return int(value) if _INT.match(value) and -(2**63) <= int(value) < 2**63 else None
    if kind is uuid.UUID:
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    if kind is str or isinstance(column.type, String):
        length = getattr(column.type, "length", None)
        return value if length is None or len(value) <= length else None
    return None  # dates, numbers, bytes: not identity columns


def coerce_all(column: Column[Any], values: Sequence[str]) -> list[Any]:
    """The `values` that can be values of `column`, as such; the others are dropped."""
    return [v for v in (coerce(column, value) for value in values) if v is not None]


def to_json(value: Any) -> Any:
    """A key value in a form a JSON checkpoint can hold."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def from_json(column: Column[Any], value: Any) -> Any:
    """Undo `to_json` for a value of `column`."""
    kind = _python_type(column)
    if value is None or kind is None or isinstance(value, kind):
        return value
    if kind is uuid.UUID:
        return uuid.UUID(value)
    if kind is datetime:
        return datetime.fromisoformat(value)
    if kind is date:
        return date.fromisoformat(value)
    if kind is Decimal:
        return Decimal(value)
    return value


def key_to_json(key: Iterable[Any]) -> list[Any]:
    """A row key (or its leading values) as a JSON list."""
    return [to_json(v) for v in key]


def key_from_json(columns: Sequence[Column[Any]], values: Sequence[Any]) -> tuple[Any, ...]:
    """Undo `key_to_json` for a key of `columns`."""
    return tuple(from_json(c, v) for c, v in zip(columns, values, strict=True))


def anonymized_value(strategy: Strategy, key: bytes, where: str, value: Any) -> Any:
    if strategy == Strategy.NULL or value is None:
        return None
    if strategy == Strategy.REDACT:
        return REDACTED
    digest = hmac.new(key, f"{where}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return digest[:HMAC_LENGTH]


def is_anonymized(strategy: Strategy, value: Any) -> bool:
    if value is None:
        return True
    if strategy == Strategy.REDACT:
        return bool(value == REDACTED)
    if strategy == Strategy.HMAC:
        return isinstance(value, str) and bool(_HMAC.match(value))
    return False


def all_anonymized(strategies: Sequence[tuple[str, Strategy]], values: Sequence[Any]) -> bool:
    """Every value of a row's anonymised columns (in `strategies`' order) is anonymised."""
    return all(is_anonymized(s, v) for (_, s), v in zip(strategies, values, strict=True))
