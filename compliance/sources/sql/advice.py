"""Index advice for SQL sources (`gdpr sources advise`): the columns requests look rows
up by that have no usable index, and the statements that would add one. Nothing here
creates an index: the statements are printed for a DBA to run when it suits them.

A request finds the subject's rows by identity columns (``lower(email) IN (...)``),
follows references from table to table to the rows they own or share, and before rows
go, looks for rows that still point at them (a shared row still used, rows kept for
others, references to detach; the database checks its foreign keys too). Each such
lookup on a column without an index reads the whole table, for every request and batch.
`needs` lists those columns from the graph alone; `advise` compares them with the live
schema's indexes.

An index is *usable* when its first column is the column (for a reference, one of its
columns), or, for a ``lower(column)`` match, when it starts with that expression; and it
is whole: not partial, and on PostgreSQL valid and a btree or hash index. A multi-column
index whose first column is another one does not count. Indexes come from SQLAlchemy's
inspector, except on SQLite, whose reflection skips expression indexes: there they come
from the pragmas and the index's own SQL.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect, Table, column, func, inspect, select, text
from sqlalchemy import table as sa_table
from sqlalchemy.engine.interfaces import ReflectedIndex

from compliance.sources.base import DataSource
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.manifest import Edge, EdgeKind
from compliance.sources.sql.source import SqlSource

MAX_NAME = 63  # PostgreSQL's limit on an identifier (bytes; our names are ASCII)
LOOKUP_METHODS = frozenset({"btree", "hash"})  # index methods that serve `col = value`
NOTHING_TO_ADVISE = "every identity and reference column has a usable index"

# The table (PostgreSQL) and, when it is partitioned, its partitions, parents first.
_TREE = text(
    "WITH target AS ("
    " SELECT c.oid FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = COALESCE(:schema, current_schema()) AND c.relname = :table),"
    " tree AS (SELECT t.relid::oid AS relid, t.parentrelid::oid AS parentrelid, t.level"
    " FROM target, pg_catalog.pg_partition_tree(target.oid) t),"
    " rels AS (SELECT relid, parentrelid, level FROM tree"
    " UNION ALL SELECT oid, NULL::oid, 0 FROM target WHERE NOT EXISTS (SELECT 1 FROM tree))"
    " SELECT r.relid, r.parentrelid, n.nspname, c.relname, c.relkind = 'p', c.relispartition,"
    " c.reltuples, pg_catalog.pg_total_relation_size(c.oid)"
    " FROM rels r JOIN pg_catalog.pg_class c ON c.oid = r.relid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " ORDER BY r.level, n.nspname, c.relname"
)
_CAST = re.compile(r"::[\w\s]+")
_STRIP = re.compile(r"[\s\"'`\[\]()]")
_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class Need:
    """Columns of `table` that requests look rows up by (`lower`: as ``lower(column)``),
    and why."""

    table: str
    columns: tuple[str, ...]
    lower: bool
    why: tuple[str, ...]

    @property
    def key(self) -> str:
        """What is looked up, as a DBA reads it: ``lower(email)``, ``order_id, line_no``."""
        return f"lower({self.columns[0]})" if self.lower else ", ".join(self.columns)


@dataclass(frozen=True)
class Index:
    """One index as far as lookups care: what it starts with, and what stops it serving."""

    name: str
    column: str | None  # its first column; None: it starts with an expression
    expression: str = ""  # its first expression, normalised (`_normal`)
    problem: str = ""  # why it cannot serve a lookup ("partial", ...); "": it can


@dataclass(frozen=True)
class Node:
    """A PostgreSQL table, or one of its partitions, with its size."""

    oid: int
    parent: int | None  # the partitioned table it is a partition of (in this tree)
    schema: str
    name: str
    partitioned: bool
    partition: bool  # a partition of some table
    rows: float  # the planner's estimate; negative: never analysed
    bytes: int


@dataclass(frozen=True)
class Advice:
    """An index to add: where, what, why, how big the table is, and the statements."""

    source: str
    table: str  # schema-qualified where the database has schemas
    key: str
    why: tuple[str, ...]
    rows: int | None  # None: unknown (never analysed)
    rows_estimated: bool  # PostgreSQL's estimate (pg_class.reltuples), not a count
    size_bytes: int | None  # on disk with its indexes; None: not known on this database
    statements: tuple[str, ...]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "table": self.table,
            "key": self.key,
            "why": list(self.why),
            "rows": self.rows,
            "rows_estimated": self.rows_estimated,
            "size_bytes": self.size_bytes,
            "statements": list(self.statements),
            "note": self.note,
        }

    def lines(self) -> list[str]:
        """The advice as text for a DBA."""
        found = [f"{self.source}: {self.table} ({self.key})"]
        found += [f"  why   {why}" for why in self.why]
        found.append(f"  size  {_size_text(self)}")
        if self.note:
            found.append(f"  note  {self.note}")
        return found + [f"  {statement}" for statement in self.statements]


@dataclass(frozen=True)
class Report:
    """What `advise_sources` found: advice, notes on sources skipped, how many examined."""

    advice: tuple[Advice, ...]
    skipped: tuple[str, ...]
    examined: int

    def text(self) -> str:
        if not self.examined:
            return "No SQL source to advise on."
        if not self.advice:
            return f"{NOTHING_TO_ADVISE}."
        head = [f"{len(self.advice)} index(es) would make requests cheaper; nothing was run."]
        if any("CONCURRENTLY" in s for a in self.advice for s in a.statements):
            head.append(
                "Run each statement on its own: CREATE INDEX CONCURRENTLY cannot run inside"
                " a transaction block."
            )
        return "\n".join(head + [line for a in self.advice for line in ["", *a.lines()]])


# --- what requests look up ----------------------------------------------------------------


def needs(graph: Graph) -> list[Need]:
    """Every column set requests look rows up by, with why (merged per table and key)."""
    found: dict[tuple[str, tuple[str, ...], bool], list[str]] = {}
    for table, columns, lower, why in _lookups(graph):
        reasons = found.setdefault((table, columns, lower), [])
        if why not in reasons:
            reasons.append(why)
    return [Need(t, cols, lower, tuple(why)) for (t, cols, lower), why in found.items()]


def _lookups(graph: Graph) -> Iterator[tuple[str, tuple[str, ...], bool, str]]:
    """(table, columns, lower, why) for each lookup requests make, as `Selector` and
    `references` build them."""
    for name, rule in graph.rules.items():
        for ident in rule.identities:
            key = Need(name, (ident.column,), ident.lower, ()).key
            why = f"identity column ({ident.type}): requests find the subject's rows by {key}"
            yield name, (ident.column,), ident.lower, why
    for e in graph.edges:
        if e.kind == EdgeKind.OWNED and e.parent in graph.reachable:
            why = f"reference {e} (owned): requests follow it to the subject's {e.child} rows"
            yield e.child, e.child_cols, False, why
        elif _checked(graph, e):
            yield e.child, e.child_cols, False, f"reference {e} ({e.kind}): {_still_used(e)}"
        if e.kind == EdgeKind.SHARED and e.child in graph.reachable:
            why = f"reference {e} (shared): requests follow it to the shared {e.parent} rows"
            yield e.parent, e.parent_cols, False, why
        if e.kind == EdgeKind.OWNED and graph.shared_from(e.child):
            why = f"reference {e} (owned): requests check whether a shared row has an owner"
            yield e.parent, e.parent_cols, False, why
    for e in graph.foreign:
        if _checked(graph, e):
            why = f"foreign key {e} ({e.child} is not in the manifest): {_still_used(e)}"
            yield e.child, e.child_cols, False, why


def _checked(graph: Graph, e: Edge) -> bool:
    """Whether rows of `e`'s child are looked up by its columns before parent rows go:
    the parent is erased, or holds shared rows erased only when nothing uses them."""
    if e.parent not in graph.reachable:
        return False
    return graph.deleted(e.parent) or bool(graph.shared_from(e.parent))


def _still_used(e: Edge) -> str:
    return f"before {e.parent} rows are erased, requests look for rows still pointing at them"


# --- advice ------------------------------------------------------------------------------


def advise_sources(sources: Iterable[DataSource]) -> Report:
    """Advice for every SQL source of `sources`; other kinds are skipped with a note."""
    found: list[Advice] = []
    skipped: list[str] = []
    examined = 0
    for source in sources:
        if isinstance(source, SqlSource):
            found.extend(advise(source))
            examined += 1
        else:
            skipped.append(f"source {source.name} ({source.kind}) is not a SQL source: skipped")
    return Report(tuple(found), tuple(skipped), examined)


def advise(source: SourceHandle) -> list[Advice]:
    """The indexes `source` lacks for requests, by table and key; reads the catalog (and
    on SQLite counts rows), writes nothing."""
    graph = source.graph
    found = []
    with source.connect() as conn:
        facts: dict[str, _Facts] = {}
        for need in needs(graph):
            if need.table not in facts:
                facts[need.table] = _Facts(conn, graph, need.table)
            advice = facts[need.table].advice(source.name, need)
            if advice is not None:
                found.append(advice)
    return sorted(found, key=lambda a: (a.table, a.key))


class _Facts:
    """What the database says of one table, read once and only as far as needed."""

    def __init__(self, conn: Connection, graph: Graph, name: str) -> None:
        table = graph.schema_tables.get(name, graph.tables.get(name))
        assert table is not None  # every table of the graph is reflected
        self.conn, self.table = conn, table
        self.sqlite = conn.dialect.name == "sqlite"
        self.indexes = indexes(conn, table)
        self._nodes: list[Node] | None = None
        self._size: tuple[int | None, bool, int | None] | None = None

    def advice(self, source: str, need: Need) -> Advice | None:
        """Advice for `need`; None when an index serves it, or the table is a partition
        (the advice for its partitioned table covers it)."""
        if any(not ix.problem and _leads(need, ix, self.sqlite) for ix in self.indexes):
            return None
        nodes = self.nodes()
        if nodes and nodes[0].partition:
            return None
        if self._size is None:
            self._size = _size(self.conn, self.table, nodes)
        rows, estimated, size = self._size
        partitioned = bool(nodes) and nodes[0].partitioned
        return Advice(
            source=source,
            table=f"{nodes[0].schema}.{nodes[0].name}" if nodes else _display(self.table),
            key=need.key,
            why=need.why,
            rows=rows,
            rows_estimated=estimated,
            size_bytes=size,
            statements=statements(self.conn.dialect, self.table, need, nodes),
            note=_note(need, self.indexes, self.sqlite, partitioned=partitioned),
        )

    def nodes(self) -> list[Node]:
        """PostgreSQL: the table and its partitions (`_TREE`); elsewhere none."""
        if self._nodes is None:
            postgres = self.conn.dialect.name == "postgresql"
            self._nodes = _tree(self.conn, self.table) if postgres else []
        return self._nodes


def _leads(need: Need, ix: Index, sqlite: bool) -> bool:
    """Whether `ix` starts with what `need` looks up."""
    if not need.lower:
        return ix.column is not None and ix.column in need.columns
    want = _normal(f"lower({need.columns[0]})")
    return bool(ix.expression) and (
        ix.expression.lower() == want.lower() if sqlite else ix.expression == want
    )


def _note(need: Need, found: Sequence[Index], sqlite: bool, *, partitioned: bool) -> str:
    parts = [
        f"index {ix.name} is {ix.problem}"
        for ix in found
        if ix.problem and _leads(need, ix, sqlite)
    ]
    if need.lower:
        column = need.columns[0]
        parts += [
            f"index {ix.name} on {column} cannot serve lower({column})"
            for ix in found
            if ix.column == column
        ]
    if partitioned:
        parts.append(
            "partitioned table: each partition is indexed CONCURRENTLY, then attached to"
            " the partitioned table's index"
        )
    return "; ".join(parts)


# --- the live schema's indexes -----------------------------------------------------------


def indexes(conn: Connection, table: Table) -> list[Index]:
    """`table`'s primary key and indexes, by what they start with."""
    inspector = inspect(conn)
    found = []
    pk = inspector.get_pk_constraint(table.name, schema=table.schema)
    if pk.get("constrained_columns"):
        found.append(Index(pk.get("name") or "primary key", pk["constrained_columns"][0]))
    if conn.dialect.name == "sqlite":
        return found + _sqlite_indexes(conn, table)
    return found + [_reflected(ix) for ix in inspector.get_indexes(table.name, table.schema)]


def _reflected(ix: ReflectedIndex) -> Index:
    options: Mapping[str, Any] = ix.get("dialect_options") or {}
    problem = ""
    if any(k.endswith("_where") and v for k, v in options.items()):
        problem = "partial (WHERE ...), which lookups cannot rely on"
    method = next((str(v) for k, v in options.items() if k.endswith("_using")), "btree")
    if method.lower() not in LOOKUP_METHODS:
        problem = f"a {method} index, which does not serve lookups by value"
    if options.get("postgresql_invalid"):
        problem = (
            "invalid (an interrupted CREATE INDEX CONCURRENTLY, or a partitioned index"
            " missing partitions): drop or finish it first"
        )
    columns = ix.get("column_names") or [None]
    expressions = ix.get("expressions") or []
    expression = _normal(expressions[0]) if columns[0] is None and expressions else ""
    return Index(ix["name"] or "", columns[0], expression, problem)


def _sqlite_indexes(conn: Connection, table: Table) -> list[Index]:
    """SQLite's indexes from its pragmas; an expression from the index's own SQL."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    schema = f"{quote(table.schema)}." if table.schema else ""
    found = []
    for row in conn.exec_driver_sql(f"PRAGMA {schema}index_list({quote(table.name)})").all():
        name, partial = str(row[1]), bool(row[4])
        first = conn.exec_driver_sql(f"PRAGMA {schema}index_xinfo({quote(name)})").first()
        if first is None:
            continue
        problem = "partial (WHERE ...), which lookups cannot rely on" if partial else ""
        if first[1] != -2:  # a column (-1: the rowid, which names nothing)
            found.append(Index(name, first[2], "", problem))
            continue
        master = sa_table(
            "sqlite_master", column("sql"), column("type"), column("name"), schema=table.schema
        )
        sql = conn.execute(
            select(master.c.sql).where(master.c.type == "index", master.c.name == name)
        ).scalar()
        found.append(Index(name, None, _normal(_first_element(str(sql or ""))), problem))
    return found


def _first_element(sql: str) -> str:
    """The first element of a CREATE INDEX statement's column list (quotes respected)."""
    depth, start, quote = 0, 0, ""
    for i, ch in enumerate(sql):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'`[":
            quote = "]" if ch == "[" else ch
        elif ch == "(":
            depth += 1
            start = i + 1 if depth == 1 else start
        elif ch == ")" and depth:
            depth -= 1
            if not depth:
                return sql[start:i]
        elif ch == "," and depth == 1:
            return sql[start:i]
    return ""


def _normal(expression: str) -> str:
    """An index expression without casts, quotes, brackets and spaces, to compare with
    what a request uses: ``lower("Email"::text)`` -> ``lowerEmail``."""
    return _STRIP.sub("", _CAST.sub("", expression))


# --- sizes -------------------------------------------------------------------------------


def _tree(conn: Connection, table: Table) -> list[Node]:
    rows = conn.execute(_TREE, {"schema": table.schema, "table": table.name}).all()
    return [
        Node(
            int(r[0]),
            None if r[1] is None else int(r[1]),
            str(r[2]),
            str(r[3]),
            bool(r[4]),
            bool(r[5]),
            float(r[6]),
            int(r[7]),
        )
        for r in rows
    ]


def _size(
    conn: Connection, table: Table, nodes: Sequence[Node]
) -> tuple[int | None, bool, int | None]:
    """(rows, estimated, bytes): PostgreSQL's estimate and size over the table's storage
    (its partitions when partitioned); elsewhere a count."""
    if nodes:
        stored = [n for n in nodes if not n.partitioned]
        known = all(n.rows >= 0 for n in stored)
        rows = round(sum(n.rows for n in stored)) if known else None
        return rows, True, sum(n.bytes for n in nodes)
    count = conn.execute(select(func.count()).select_from(table)).scalar_one()
    return int(count), False, None


def _size_text(advice: Advice) -> str:
    if advice.rows is None:
        rows = "rows unknown (not analysed yet)"
    else:
        rows = f"{'~' if advice.rows_estimated else ''}{advice.rows:,} rows"
    return rows if advice.size_bytes is None else f"{rows}, {_bytes(advice.size_bytes)}"


def _bytes(size: int) -> str:
    value, unit = float(size), "bytes"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 10 * 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}"


# --- statements --------------------------------------------------------------------------


def statements(
    dialect: Dialect, table: Table, need: Need, nodes: Sequence[Node]
) -> tuple[str, ...]:
    """The statements that add the index `need` wants. PostgreSQL: CONCURRENTLY (writes
    go on); a partitioned table gets an index ON ONLY itself, one per partition built
    CONCURRENTLY, each attached to its parent's. SQLite names the schema on the index."""
    q = _quoter(dialect)
    key = f"lower({q(need.columns[0])})" if need.lower else ", ".join(q(c) for c in need.columns)
    name = index_name(table.name, need.columns, need.lower)
    if dialect.name == "sqlite":
        where = f"{q(table.schema)}." if table.schema else ""
        return (f"CREATE INDEX {where}{q(name)} ON {q(table.name)} ({key});",)
    if not nodes:
        target = f"{q(table.schema)}.{q(table.name)}" if table.schema else q(table.name)
        return (f"CREATE INDEX {q(name)} ON {target} ({key});",)
    return _pg_statements(nodes, need, key, q)


def _pg_statements(
    nodes: Sequence[Node], need: Need, key: str, q: Callable[[str], str]
) -> tuple[str, ...]:
    by_oid = {n.oid: n for n in nodes}
    parents = {n.parent for n in nodes if n.parent is not None}

    def name(n: Node) -> str:
        return q(index_name(n.name, need.columns, need.lower))

    def target(n: Node) -> str:
        return f"{q(n.schema)}.{q(n.name)}"

    found = []
    for n in nodes:
        if not n.partitioned:
            found.append(f"CREATE INDEX CONCURRENTLY {name(n)} ON {target(n)} ({key});")
        else:  # PostgreSQL builds no index on a partitioned table CONCURRENTLY
            only = "ONLY " if n.oid in parents else ""
            found.append(f"CREATE INDEX {name(n)} ON {only}{target(n)} ({key});")
    for n in reversed(nodes):
        if n.parent is not None:
            parent = by_oid[n.parent]
            found.append(
                f"ALTER INDEX {q(parent.schema)}.{name(parent)}"
                f" ATTACH PARTITION {q(n.schema)}.{name(n)};"
            )
    return tuple(found)


def index_name(table: str, columns: Sequence[str], lower: bool) -> str:
    """``ix_<table>_<columns>[_lower]`` in lower case; when that is longer than 63
    characters or had to drop characters, cut and ended with a hash of the full name
    (deterministic, and distinct for different tables and columns)."""
    full = "_".join(["ix", table, *columns, *(["lower"] if lower else [])])
    clean = re.sub(r"[^a-z0-9_]+", "_", full.lower())
    if len(clean) <= MAX_NAME and clean == full.lower():
        return clean
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{clean[: MAX_NAME - 9]}_{digest}"


def _quoter(dialect: Dialect) -> Callable[[str], str]:
    """Quote a name only when it needs it (case, characters, reserved words), as a DBA
    types it: unlike the dialect's own quoting, no ``%`` doubled for the driver."""
    preparer = dialect.identifier_preparer

    def quote(name: str) -> str:
        if _PLAIN.fullmatch(name) and name not in preparer.reserved_words:
            return name
        escaped = name.replace(preparer.escape_quote, preparer.escape_to_quote)
        return f"{preparer.initial_quote}{escaped}{preparer.final_quote}"

    return quote


def _display(table: Table) -> str:
    return f"{table.schema}.{table.name}" if table.schema else table.name
