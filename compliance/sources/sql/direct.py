"""Erasing a table that holds more of the subject's rows than a batch (PostgreSQL): each
batch is one statement that finds up to a batch of the subject's rows on the server and
deletes them, instead of reading every key into memory first and binding them back.

It serves a table whose rows are the subject's by a plain condition (`suits`): its rows
are deleted, nothing that stays can point at them (no reference to keep a row for,
detach or repoint), and no shared row orphaned by this erasure owns them; nobody else's
row has to be told apart there, so the condition alone says which rows go. Every other
table keeps the key lists of `subject` and `batches`. The condition is made of parts,
one column each (`Part`): an identity column (or ``lower(column)``) with the subject's
identities, or an owned reference with the values of the parent's own rows it points
at: bound from memory when they are few (`Subject.bounded`, at most a batch), else read
from the parent table a page of `PAGE` at a time (`Pages`: the parents are deleted after
their children, so they are still there). A batch binds a slice of those values, as wide
as their rows per value let it fill about a batch (`FILL`), and is::

    DELETE FROM t WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM t WHERE col = ANY(:values) [ORDER BY col] LIMIT <batch>))

Values that hold more rows than a batch take several statements; from the second on,
ORDER BY makes the planner walk the column's index, skipping the rows deleted before,
rather than scan the table again (so a part needs a usable btree index on its column;
a table without one keeps the key lists). The row address (ctid) is used only inside the
one statement, which reads one snapshot, and only in a plain table (not partitioned, no
inheritance children: there addresses repeat, `plain_tables`). A row changed by someone
else while its batch deletes it is not deleted (its new version has a new address), so
when every part is through, each checks with one read that none of its rows is left;
one found starts the parts again (`MAX_PASSES` at most). Memory holds one page of values
at most, and the checkpoint nothing more than the table's index: a run resumed elsewhere
starts the parts again (what was deleted is gone; what is left is found as before)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnClause,
    ColumnElement,
    Connection,
    Executable,
    Select,
    Table,
    Text,
    UniqueConstraint,
    and_,
    any_,
    bindparam,
    cast,
    column,
    delete,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from compliance.errors import ResidualDataError
from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import CHUNK, bound_array, key_in, placeholder_key
from compliance.sources.sql.query import identity_lookups
from compliance.sources.sql.subject import Subject

PAGE = CHUNK  # values of a parent's rows read per page
MAX_PASSES = 3  # passes that leave rows behind (changed meanwhile), then give up
FILL = 0.9  # share of a batch a slice of values aims at, so one statement finishes it

_PLAIN_TABLES = text(
    "SELECT n.name FROM unnest(CAST(:names AS text[])) AS n(name)"
    " JOIN pg_catalog.pg_class c ON c.oid = to_regclass(n.name)"
    " WHERE c.relkind = 'r' AND NOT EXISTS"
    " (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid)"
)
_EXPRESSION = re.compile(r"::[\w\s]+|[\s\"()]")


class Session(Protocol):
    """Statements on one connection, each committed on its own (`batches.Deleter`)."""

    def rows(self, stmt: Select[Any]) -> list[tuple[Any, ...]]: ...

    def count(self, stmt: Executable, params: dict[str, Any]) -> int: ...


class Pages:
    """The distinct values of one column of a parent table's own rows, a page at a
    time in the database's order: one condition after the other (`Subject.match`'s)."""

    def __init__(self, graph: Graph, table: str, name: str, where: list[ColumnElement[bool]]):
        self.graph, self.table, self.name, self.where = graph, table, name, where
        self.restart()

    def restart(self) -> None:
        self.at = 0  # the condition being read
        self.after: Any = None  # the last value read under it

    def next(self, session: Session) -> list[Any]:
        """The next page of values; empty when every condition is read."""
        col = self.graph.tables[self.table].c[self.name]
        while self.at < len(self.where):
            query = select(col).where(self.where[self.at])
            if self.after is not None:
                query = query.where(col > bindparam("after", self.after, type_=col.type))
            if self.graph.keys[self.table] != (self.name,):
                query = query.distinct()
            page = [row[0] for row in session.rows(query.order_by(col).limit(PAGE + 1))]
            if len(page) > PAGE:  # more after this page
                page = page[:PAGE]
                self.after = page[-1]
                return page
            self.at, self.after = self.at + 1, None
            if page:
                return page
        return []

    def select(self) -> Select[Any]:
        """All of the values, as one query."""
        col = self.graph.tables[self.table].c[self.name]
        return select(col).where(or_(*self.where))


@dataclass
class Part:
    """One column of the condition: rows whose `expr` holds one of `values`, or of the
    values `pages` reads; `left` finds whether any such row is still there."""

    expr: ColumnElement[Any]
    left: Select[Any]
    values: list[Any] = field(default_factory=list)
    pages: Pages | None = None
    _batches: dict[tuple[bool, int, bool], Executable] = field(default_factory=dict)

    def batch(self, graph: Graph, table: str, ints: bool, size: int, ordered: bool) -> Executable:
        """The batch statement (`_statement`), built once per shape."""
        shape = (ints, size, ordered)
        if shape not in self._batches:
            self._batches[shape] = _statement(graph, table, self.expr, *shape)
        return self._batches[shape]


class Direct:
    """The server-side erasure of one table for one subject, and where it stands."""

    def __init__(self, source: str, graph: Graph, table: str, parts: list[Part]) -> None:
        self.source, self.graph, self.table, self.parts = source, graph, table, parts
        self.width = CHUNK  # values bound per statement (adapts to their rows per value)
        self.passes = 1
        self.done = False
        self._start()

    def _start(self) -> None:
        self.part = 0
        self.values: list[Any] = []  # the page of values being deleted
        self.at = 0  # the first value of the page not finished
        self.found = 0  # rows deleted for the slice of values at `at`
        self.loaded = False  # the current part's values were handed out
        for part in self.parts:
            if part.pages is not None:
                part.pages.restart()

    def step(self, session: Session, batch: int) -> int:
        """Delete the next batch: statements until one deletes rows (values whose rows
        are gone already, as when a run starts again, cost one statement each) or the
        table is done; reading pages of values as needed. How many rows went."""
        if not self.loaded:
            self.width = min(self.width, max(1, batch // 8))
        while not self.done:
            if self.at >= len(self.values) and not self._load(session):
                continue
            part = self.parts[self.part]
            values = self.values[self.at : self.at + self.width]
            ints = all(type(v) is int for v in values)
            ordered = self.found > 0  # these values hold more than a batch: walk the index
            stmt = part.batch(self.graph, self.table, ints, batch, ordered)
            bound = "{" + ",".join(map(str, values)) + "}" if ints else values
            gone = session.count(stmt, {"values": bound})
            self.found += gone
            if gone < batch:  # every row of these values is gone
                self._fit(len(values), batch)
                self.at += len(values)
            if gone:
                return gone
        return 0

    def _fit(self, used: int, batch: int) -> None:
        """The next slice's width, from the rows per value of the one just finished."""
        wanted = int(FILL * batch * used / self.found) if self.found else self.width * 4
        self.width = max(1, min(CHUNK, self.width * 4, wanted))
        self.found = 0

    def _load(self, session: Session) -> bool:
        """Move on to the current part's next page of values, or the next part; after the
        last, check nothing is left (else start again); whether there are values now."""
        part = self.parts[self.part]
        self.at = 0
        if part.pages is not None:
            self.values = part.pages.next(session)
        else:
            self.values = [] if self.loaded else part.values
        self.loaded = True
        if self.values:
            return True
        self.part, self.loaded = self.part + 1, False
        if self.part >= len(self.parts):
            self._check(session)
        return False

    def _check(self, session: Session) -> None:
        """Done when none of the parts finds a row any more (one changed while it was
        deleted is not deleted: its new version is found here); else another pass."""
        if not any(session.rows(part.left) for part in self.parts):
            self.done = True
            return
        if self.passes >= MAX_PASSES:
            raise ResidualDataError(
                f"source {self.source}: rows of {self.table} kept changing while they "
                f"were deleted ({MAX_PASSES} passes); retry the request"
            )
        self.passes += 1
        self._start()


def _statement(
    graph: Graph, table: str, expr: ColumnElement[Any], ints: bool, size: int, ordered: bool
) -> Executable:
    """One batch: delete up to `size` rows whose `expr` holds one of ``:values`` (an
    array; integers as the text of one); `ordered`: the first ones in `expr`'s order,
    which walks its index from the start, past the rows deleted before (for values
    with more rows than a batch), else any (values expected to hold fewer: the
    database reads them as it likes best). The same text for every batch, planned and
    prepared once; the LIMIT is written in, so that the plan is made for it."""
    t = graph.tables[table]
    ctid: ColumnClause[Any] = column("ctid", _selectable=t)  # the row's address
    if ints:
        values: ColumnElement[Any] = cast(bindparam("values", type_=Text()), ARRAY(BigInteger()))
    else:
        values = bindparam("values", type_=ARRAY(expr.type))
    where = _matching(graph, table, expr, values)
    picked = select(ctid).where(where).limit(literal_column(str(int(size))))
    if ordered:
        picked = picked.order_by(expr)
    return delete(t).where(ctid == any_(func.array(picked.scalar_subquery())))


def _matching(
    graph: Graph,
    table: str,
    expr: ColumnElement[Any],
    values: Sequence[Any] | Select[Any] | ColumnElement[Any],
) -> ColumnElement[bool]:
    """Rows of `table` whose `expr` holds one of `values` (a list, bound as one array; an
    array parameter; or a query's values, as one array), never the placeholder row."""
    if isinstance(values, Select):
        array: ColumnElement[Any] = func.array(values.scalar_subquery())
    elif isinstance(values, ColumnElement):
        array = values
    else:
        array = bound_array(list(values), expr)
    where: ColumnElement[bool] = expr == any_(array)
    spare = placeholder_key(graph, table)
    if spare is None:
        return where
    return and_(where, not_(key_in(graph, table, [spare])))


def _left(graph: Graph, table: str, expr: ColumnElement[Any], values: Any) -> Select[Any]:
    """Whether a row of `table` whose `expr` holds one of `values` is still there (on
    the index, like the batches)."""
    where = _matching(graph, table, expr, values)
    return select(literal(1)).select_from(graph.tables[table]).where(where).order_by(expr).limit(1)


# --- which tables, and their parts ---------------------------------------------------


def suits(graph: Graph, subject: Subject, table: str) -> bool:
    """Whether `table` can be erased this way (module docstring), from the graph alone."""
    if graph.dialect != "postgresql" or not graph.deleted(table) or subject.changes(table):
        return False
    if graph.fix_edges(table) or graph.keep_edges(table):
        return False
    owned = graph.owned_parents(table)
    if any(len(e.child_cols) != 1 or len(e.parent_cols) != 1 for e in owned):
        return False
    t = graph.tables[table]
    wanted = [(c.column, c.lower) for c in graph.rules[table].identities]
    wanted += [(e.child_cols[0], False) for e in owned]
    return all(indexed(t, name, lower) for name, lower in wanted)


def indexed(t: Table, name: str, lower: bool = False) -> bool:
    """Whether a whole btree index of `t` starts with column `name` (or ``lower(name)``)."""
    if not lower:
        firsts = [list(t.primary_key.columns)[:1]]
        firsts += [list(c.columns)[:1] for c in t.constraints if isinstance(c, UniqueConstraint)]
        if any(first and first[0].name == name for first in firsts):
            return True
    for ix in t.indexes:
        options = ix.dialect_options["postgresql"]
        if options.get("where") is not None or (options.get("using") or "btree") != "btree":
            continue
        first = list(ix.expressions)[:1]
        if not first:
            continue
        if lower:
            if _EXPRESSION.sub("", str(first[0])).lower() == f"lower{name}":
                return True
        elif isinstance(first[0], Column) and first[0].name == name:
            return True
    return False


def plain_tables(conn: Connection, tables: Sequence[Table]) -> set[str]:
    """The names of `tables` that are ordinary tables without inheritance children
    (partitions included), where a row's address names one row; one statement."""
    quote = conn.dialect.identifier_preparer.format_table
    names = {quote(t): t.name for t in tables}
    found = conn.execute(_PLAIN_TABLES, {"names": list(names)}).scalars()
    return {names[name] for name in found}


def start(
    source: str,
    conn: Connection,
    subject: Subject,
    table: str,
    batch: int,
    since: float | None,
    plain: Callable[[Connection, Table], bool],
) -> Direct | None:
    """The server-side erasure of `table` (which `suits`) when it holds more than one
    batch of the subject's rows; None when they fit one batch (read now and kept by
    `subject`), when `plain` (`plain_tables`) says it is not a plain table, or when a
    parent's rows that lead to them could only be read whole."""
    graph = subject.graph
    found = subject.bounded(conn, table, batch, since)
    t = graph.tables[table]
    if (found is not None and len(found) <= batch) or not plain(conn, t):
        return None
    parts = [
        Part(expr, _left(graph, table, expr, values), sorted(set(values)))
        for expr, values in identity_lookups(graph, table, subject.identities)
    ]
    for e in graph.owned_parents(table):
        col = t.c[e.child_cols[0]]
        rows = subject.bounded(conn, e.parent, batch, since)
        if rows is not None:
            values = [v[0] for v in rows.values(e.parent_cols)]
            if values:
                parts.append(Part(col, _left(graph, table, col, values), values))
            continue
        where = _parent_match(conn, subject, e.parent, batch, since)
        if where is None:
            return None
        pages = Pages(graph, e.parent, e.parent_cols[0], where)
        parts.append(Part(col, _left(graph, table, col, pages.select()), pages=pages))
    return Direct(source, graph, table, parts)


def _parent_match(
    conn: Connection, subject: Subject, table: str, batch: int, since: float | None
) -> list[ColumnElement[bool]] | None:
    """`Subject.match` for `table`, when each of its own parents' rows are few
    (bounded); None otherwise."""
    parents = []
    for e in subject.graph.owned_parents(table):
        rows = subject.bounded(conn, e.parent, batch, since)
        if rows is None:
            return None
        parents.append((e, rows))
    return subject.conditions(table, parents)
