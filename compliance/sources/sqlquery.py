"""SQL expressions over a source's graph: which rows of a table are the subject's.

`Selector.where(table)` is one boolean expression, built from bound parameters only:
the table's identity columns matched against the subject's identities, OR its owned
parents' subject rows, OR (depending on the use) the shared rows they point at. An
identity value that cannot be a value of the column (``x' OR 1=1 --`` for an integer
column, 10 KB for a ``varchar(255)``) is dropped before it reaches the database: it can
match nothing there anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    FromClause,
    Select,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    exists,
    false,
    func,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from compliance.identities import Identities
from compliance.sources.base import Disposition
from compliance.sources.sqlgraph import HMAC_LENGTH, REDACTED, Edge, EdgeKind, Graph, Strategy

Key = tuple[Any, ...]
_INT = re.compile(r"^-?[0-9]{1,19}$")
_HMAC = re.compile(rf"^[0-9a-f]{{{HMAC_LENGTH}}}$")


class Selector:
    """Builds the subject's row condition per table, for one set of identities.

    A table's *own* rows are those matching an identity column, owned by an own row of a
    parent, or (during erasure) shared rows found orphaned: `shared` is then a mapping
    table -> their keys. With ``shared="referenced"`` (export and its plan), `where` adds
    every shared row an own row points at; ownership does not spread from those (another
    customer's order is not the subject's because it ships to an address they share).
    """

    def __init__(
        self,
        graph: Graph,
        identities: Identities,
        shared: str | Mapping[str, Sequence[Key]] = "none",
    ) -> None:
        self.graph = graph
        self.identities = identities
        self.shared = shared
        self._memo: dict[str, ColumnElement[bool] | None] = {}

    def where(self, table: str) -> ColumnElement[bool] | None:
        """The condition for the subject's rows of `table`; None: it has none."""
        own = self.own(table)
        if self.shared != "referenced":
            return own
        parts = [p for p in (own, self.candidates(table)) if p is not None]
        return or_(*parts) if parts else None

    def rows(self, table: str) -> ColumnElement[bool]:
        """Like `where`, as an expression that matches nothing when there is nothing."""
        where = self.where(table)
        return false() if where is None else where

    def own(self, table: str) -> ColumnElement[bool] | None:
        """The subject's own rows of `table` (see the class docstring); None: none."""
        if table not in self._memo:
            self._memo[table] = self._own(table)
        return self._memo[table]

    def identity_match(self, table: str, *, resolving: bool = False) -> ColumnElement[bool] | None:
        """Rows whose identity columns hold one of the subject's identities."""
        t = self.graph.tables[table]
        parts = []
        for ident in self.graph.rules[table].identities:
            if resolving and not ident.resolve:
                continue
            column = t.c[ident.column]
            values = _coerce_all(column, self.identities.values(ident.type))
            if not values:
                continue
            if ident.lower:
                parts.append(func.lower(column).in_([str(v).lower() for v in values]))
            else:
                parts.append(column.in_(values))
        return or_(*parts) if parts else None

    def _own(self, table: str) -> ColumnElement[bool] | None:
        if table not in self.graph.reachable:
            return None
        t = self.graph.tables[table]
        parts = []
        match = self.identity_match(table)
        if match is not None:
            parts.append(match)
        for e in self.graph.owned_parents(table):
            parent = self.own(e.parent)
            if parent is not None:
                p = self.graph.tables[e.parent]
                sub = select(*[p.c[c] for c in e.parent_cols]).where(parent)
                parts.append(cols_expr(t, e.child_cols).in_(sub))
        if isinstance(self.shared, Mapping) and self.shared.get(table):
            keys = key_in(self.graph, table, self.shared[table])
            parts.append(and_(keys, self.unreferenced(table)))
        return or_(*parts) if parts else None

    def candidates(self, table: str) -> ColumnElement[bool] | None:
        """Rows of a shared table that the subject's own rows point at."""
        t = self.graph.tables[table]
        parts = []
        for e in self.graph.shared_from(table):
            child = self.own(e.child)
            if child is not None:
                c = self.graph.tables[e.child]
                sub = select(*[c.c[n] for n in e.child_cols]).where(child)
                parts.append(cols_expr(t, e.parent_cols).in_(sub))
        return or_(*parts) if parts else None

    def unreferenced(self, table: str) -> ColumnElement[bool]:
        """Rows of `table` that nothing points at, once the subject's deleted rows are gone
        (owned children that go with the row do not count)."""
        plain = Selector(self.graph, self.identities, "none")
        t = self.graph.tables[table]
        guards = [e for e in self.graph.incoming(table) if not self._goes_with_parent(e)]
        parts = []
        for e in [*guards, *(f for f in self.graph.foreign if f.parent == table)]:
            child = self.graph.schema_tables[e.child].alias()
            pairs = zip(e.child_cols, e.parent_cols, strict=True)
            cond = and_(*[child.c[c] == t.c[p] for c, p in pairs])
            staying = plain.staying(e.child, child)
            if staying is not None:
                cond = and_(cond, staying)
            parts.append(~exists().where(cond))
        return and_(true(), *parts)

    def staying(self, table: str, rows: FromClause) -> ColumnElement[bool] | None:
        """Rows of `rows` (`table` or an alias of it) that erasure does not delete;
        None: all of them stay."""
        going = self.own(table) if self._deleted(table) else None
        if going is None:
            return None
        keys = select(*key_columns(self.graph, table)).where(going)
        staying: ColumnElement[bool] = ~cols_expr(rows, self.graph.keys[table]).in_(keys)
        return staying

    def _deleted(self, table: str) -> bool:
        rule = self.graph.rules.get(table)
        return rule is not None and rule.on_erase == Disposition.DELETE

    def _goes_with_parent(self, e: Edge) -> bool:
        return e.kind == EdgeKind.OWNED and self._deleted(e.child)


# --- keys and columns ----------------------------------------------------------------


def cols_expr(table: FromClause, names: Sequence[str]) -> Any:
    """One column, or a row value of several (composite keys and references)."""
    if len(names) == 1:
        return table.c[names[0]]
    return tuple_(*[table.c[n] for n in names])


def key_in(graph: Graph, table: str, keys: Sequence[Key]) -> ColumnElement[bool]:
    t = graph.tables[table]
    return values_in([t.c[n] for n in graph.keys[table]], keys, graph.dialect)


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


def key_after(graph: Graph, table: str, after: Key) -> ColumnElement[bool]:
    t = graph.tables[table]
    names = graph.keys[table]
    later: ColumnElement[bool]
    if len(names) == 1:
        later = t.c[names[0]] > after[0]
    else:
        later = tuple_(*[t.c[n] for n in names]) > tuple_(*after)
    return later


def key_columns(graph: Graph, table: str) -> list[Column[Any]]:
    t = graph.tables[table]
    return [t.c[n] for n in graph.keys[table]]


# --- values ------------------------------------------------------------------------------


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


def _coerce_all(column: Column[Any], values: Sequence[str]) -> list[Any]:
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
