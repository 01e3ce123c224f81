"""Row keys and column tuples as SQL: row values, key lists as parameters, key ranges,
and reading many keys fast. Every value goes in as a bound parameter.

Single values of a SQL source: identity strings coerced to a column's type, keys in
and out of a JSON checkpoint, anonymised values and the test for them.

An identity is matched as the text it is, or as a value of the column's declared type
only when that value's canonical text is the identity: ``1`` matches integer 1, but
``01``, ``+1``, ``-0``, ``1.0`` and ``1e0`` match nothing in an integer column (they
are not how anyone writes that id, and would otherwise turn one subject into another).
A UUID matches in its canonical 8-4-4-4-12 form with dashes, in either case (UUIDs are
case-insensitive); braces, ``urn:uuid:`` and the form without dashes match nothing.
Other numbers (numeric, decimal, float), dates and bytes are not identity columns: no
identity matches there.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    String,
    any_,
    bindparam,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from compliance.sources.sql.graph import Graph
from compliance.sources.sql.manifest import HMAC_LENGTH, REDACTED, Strategy

T = TypeVar("T")

Key = tuple[Any, ...]

CHUNK = 10_000  # values of one bound list in one statement; longer lists take several
LIST_PARAMS = 2_000  # bound parameters a statement may carry outside PostgreSQL


def chunk_size(dialect: str, width: int = 1) -> int:
    """How many values (of `width` columns each) one bound list may hold: on PostgreSQL
    a list is one array parameter per column, elsewhere one parameter per value, and
    drivers cap those (SQLite at 32,766, older builds at 999; SQL Server at 2,100)."""
    if dialect == "postgresql":
        return max(1, CHUNK)
    return max(1, min(CHUNK, LIST_PARAMS // max(1, width)))


def chunked(values: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`values` in slices of at most `size`, in order."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def sort_key(key: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    """An order for keys (and reference values) that never compares None with a value."""
    return tuple((1, 0) if v is None else (0, v) for v in key)


def cols_expr(table: FromClause, names: Sequence[str]) -> Any:
    """One column, or a row value of several (composite keys and references)."""
    if len(names) == 1:
        return table.c[names[0]]
    return tuple_(*[table.c[n] for n in names])


def in_rows(
    table: FromClause,
    names: Sequence[str],
    other: FromClause,
    other_names: Sequence[str],
    where: ColumnElement[bool],
) -> ColumnElement[bool]:
    """Rows of `table` whose columns `names` equal the columns `other_names` of a row of
    `other` matching `where` (one side of a reference, followed either way)."""
    found: ColumnElement[bool] = cols_expr(table, names).in_(
        select(*[other.c[n] for n in other_names]).where(where)
    )
    return found


def key_columns(graph: Graph, table: str) -> list[Column[Any]]:
    t = graph.tables[table]
    return [t.c[n] for n in graph.keys[table]]


def key_in(graph: Graph, table: str, keys: Sequence[Key]) -> ColumnElement[bool]:
    return values_in(key_columns(graph, table), keys, graph.dialect)


def values_in(
    columns: Sequence[ColumnElement[Any]], values: Sequence[Key], dialect: str
) -> ColumnElement[bool]:
    """`columns` (one, or a row value of several) equal one of `values`.

    On PostgreSQL one array parameter per column (``= ANY(:a)``; ``IN (SELECT unnest(:a),
    unnest(:b))`` for several) keeps the statement text the same for every batch, so it
    is planned and prepared once; elsewhere an ``IN`` list.
    """
    found: ColumnElement[bool]
    if dialect == "postgresql":
        arrays = [bound_array([v[i] for v in values], c) for i, c in enumerate(columns)]
        if len(columns) == 1:
            found = columns[0] == any_(arrays[0])
        else:
            found = tuple_(*columns).in_(select(*[func.unnest(a) for a in arrays]))
    elif len(columns) == 1:
        found = columns[0].in_([v[0] for v in values])
    else:
        found = tuple_(*columns).in_([tuple(v) for v in values])
    return found


def bound_array(values: list[Any], column: ColumnElement[Any]) -> ColumnElement[Any]:
    """One PostgreSQL array parameter, sent as an array (``%(p)s::BIGINT[]`` for
    integers). Never as text cast to an array in SQL: PostgreSQL then parses that text
    again for every row it compares, which made a scan of 500k rows against 16 keys 7x
    slower than against the same keys bound as an array (measured on PostgreSQL 15)."""
    if all(type(v) is int for v in values):
        return bindparam(None, values, type_=ARRAY(BigInteger()), expanding=False)
    return bindparam(None, values, type_=ARRAY(column.type), expanding=False)


def key_after(graph: Graph, table: str, after: Key) -> ColumnElement[bool]:
    t = graph.tables[table]
    names = graph.keys[table]
    later: ColumnElement[bool]
    if len(names) == 1:
        later = t.c[names[0]] > after[0]
    else:
        later = tuple_(*[t.c[n] for n in names]) > tuple_(*after)
    return later


def fetch_all(conn: Connection, query: Select[Any]) -> list[tuple[Any, ...]]:
    """Every row of `query` as plain tuples. On PostgreSQL straight from the driver's
    cursor: psycopg already returns the Python types of reflected columns, and that is about
    a fifth of the client time SQLAlchemy's row objects take for many keys."""
    result = conn.execute(query)
    if conn.dialect.name != "postgresql":
        return [tuple(row) for row in result]
    rows: list[tuple[Any, ...]] = list(result.cursor.fetchall())
    result.close()
    return rows


_INT = re.compile(r"0|-?[1-9][0-9]{0,18}")  # canonical: no sign but -, no leading zeros
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HMAC = re.compile(rf"^[0-9a-f]{{{HMAC_LENGTH}}}$")


def python_type(column: Column[Any]) -> type | None:
    """The Python type a column's values come back as (None: the dialect does not say)."""
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def coerce(column: Column[Any], value: str) -> Any | None:
    """`value` as a value of `column`, or None if it cannot be one or is not written the
    canonical way (module docstring: ``01`` is not integer 1)."""
    kind = python_type(column)
    if kind is int:
        return int(value) if _INT.fullmatch(value) and -(2**63) <= int(value) < 2**63 else None
    if kind is uuid.UUID:
        return uuid.UUID(value) if _UUID.fullmatch(value) else None
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
    kind = python_type(column)
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


def placeholder_key(graph: Graph, table: str) -> Key | None:
    """The key of `table`'s placeholder row (declared in the manifest), if it has one."""
    values = dict(graph.rules[table].placeholder)
    if not values:
        return None
    return tuple(values[name] for name in graph.keys[table])
