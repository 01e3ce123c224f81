"""Row keys and column tuples as SQL: row values, key lists as parameters, key ranges,
and reading many keys fast. Every value goes in as a bound parameter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    Text,
    any_,
    bindparam,
    cast,
    func,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from compliance.sources.sqlgraph import Graph

Key = tuple[Any, ...]


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
    columns: Sequence[Column[Any]], values: Sequence[Key], dialect: str
) -> ColumnElement[bool]:
    """`columns` (one, or a row value of several) equal one of `values`.

    On PostgreSQL one array parameter per column (``= ANY(:a)``; ``IN (SELECT unnest(:a),
    unnest(:b))`` for several) keeps the statement text the same for every batch, so it
    is planned and prepared once; elsewhere an ``IN`` list.
    """
    found: ColumnElement[bool]
    if dialect == "postgresql":
        arrays = [_array([v[i] for v in values], c) for i, c in enumerate(columns)]
        if len(columns) == 1:
            found = columns[0] == any_(arrays[0])
        else:
            found = tuple_(*columns).in_(select(*[func.unnest(a) for a in arrays]))
    elif len(columns) == 1:
        found = columns[0].in_([v[0] for v in values])
    else:
        found = tuple_(*columns).in_([tuple(v) for v in values])
    return found


def _array(values: list[Any], column: Column[Any]) -> ColumnElement[Any]:
    """One PostgreSQL array parameter; integers go as one ``'{1,2,3}'`` string, which
    psycopg passes through instead of adapting every element in Python."""
    if all(type(v) is int for v in values):
        text = "{" + ",".join(map(str, values)) + "}"
        return cast(bindparam(None, text, type_=Text()), ARRAY(BigInteger()))
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
