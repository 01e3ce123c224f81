"""Whole-partition retention for PostgreSQL declarative RANGE partitioning.

A table partitioned BY RANGE on a policy's timestamp column loses whole partitions past
the cutoff instead of rows (as GitLab's partition manager does). A partition whose upper
bound is at or before the cutoff is first DETACHED, in its own short transaction under
``lock_timeout``, and the detachment is recorded in the source database itself, on the
detached table::

    COMMENT ON TABLE child IS 'gdpr-retention detached-at=<iso> drop-after=<iso>
        policy=<name> parent=<schema>.<table> bounds=<from>..<to>'

(one line; names and UTC timestamps only, never personal data; an open bound is
``MINVALUE`` / ``MAXVALUE``). Only after the grace period (``drop-after``) does
`drop_expired` DROP it. Until then the detachment is reversible with `reattach`, which
does the equivalent of::

    ALTER TABLE <schema>.<parent> ATTACH PARTITION <schema>.<child>
        FOR VALUES FROM ('<from>') TO ('<to>');
    COMMENT ON TABLE <schema>.<child> IS NULL;

A DEFAULT partition is never detached, nor one without an upper bound. Rows past the
cutoff in a partition that straddles it are the row path's (`retention`). Bounds of
``timestamp`` and ``date`` keys are taken as UTC; every datetime here is aware UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    String,
    Table,
    TableClause,
    column,
    delete,
    exists,
    func,
    literal,
    select,
    table,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.visitors import replacement_traverse

from compliance.errors import NotFoundError, UnsupportedError
from compliance.sources.sql.engine import translate_errors

PREFIX = "gdpr-retention "  # the comment that marks a partition detached for retention
Name = tuple[str, str]  # (schema, table)

# The partition key of a partitioned table: strategy, number of columns, the first one.
_KEY = text(
    "SELECT pt.partstrat, pt.partnatts, a.attname,"
    " a.atttypid IN ('date'::regtype, 'timestamp'::regtype, 'timestamptz'::regtype)"
    " FROM pg_catalog.pg_partitioned_table pt"
    " JOIN pg_catalog.pg_class c ON c.oid = pt.partrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]"
    " WHERE n.nspname = COALESCE(:schema, current_schema()) AND c.relname = :table"
)
# The attached partitions of a table, with their bounds as SQL.
_CHILDREN = text(
    "SELECT c.relname, cn.nspname, pg_catalog.pg_get_expr(c.relpartbound, c.oid)"
    " FROM pg_catalog.pg_inherits i"
    " JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid"
    " JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace"
    " JOIN pg_catalog.pg_class p ON p.oid = i.inhparent"
    " JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace"
    " WHERE c.relispartition AND pn.nspname = COALESCE(:schema, current_schema())"
    " AND p.relname = :table"
)
# Tables (of any schema) detached for retention: not a partition, our comment on them.
_RECORDED = text(
    "SELECT n.nspname, c.relname, d.description"
    " FROM pg_catalog.pg_description d"
    " JOIN pg_catalog.pg_class c ON c.oid = d.objoid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE d.classoid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0"
    " AND c.relkind IN ('r', 'p', 'f') AND NOT c.relispartition"
    " AND d.description LIKE 'gdpr-retention %'"
)
_PARTITIONED = text(
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'p'"
)
_RANGE = re.compile(r"FOR VALUES FROM \((?P<low>.*)\) TO \((?P<high>.*)\)", re.DOTALL)
_VALUE = re.compile(r"MINVALUE|MAXVALUE|'(?P<text>(?:[^']|'')*)'")


@dataclass(frozen=True)
class Partition:
    """One attached partition and its bounds (None: MINVALUE / MAXVALUE, or DEFAULT)."""

    name: str
    schema: str | None
    low: datetime | None
    high: datetime | None
    is_default: bool = False


@dataclass(frozen=True)
class DetachedPartition:
    """A partition detached for retention, as its comment records it."""

    name: str
    schema: str
    parent: str  # "<schema>.<table>"
    policy: str
    detached_at: datetime
    drop_after: datetime
    low: datetime | None
    high: datetime | None

    @property
    def bounds(self) -> tuple[datetime | None, datetime | None]:
        return self.low, self.high


@dataclass(frozen=True)
class Dropped:
    """What `drop_expired` dropped: the partitions (schema-qualified) and their rows."""

    partitions: tuple[str, ...] = ()
    rows: int = 0


# --- reading ---------------------------------------------------------------------------


def range_partitioned(conn: Connection, schema: str | None, table: str, column: str) -> bool:
    """Whether `table` is partitioned BY RANGE on exactly `column` (a date or timestamp).
    False on any database but PostgreSQL."""
    if conn.dialect.name != "postgresql":
        return False
    with _errors("", schema, table):
        row = conn.execute(_KEY, {"schema": schema, "table": table}).first()
    return row is not None and tuple(row) == ("r", 1, column, True)


def partitions(conn: Connection, schema: str | None, table: str) -> list[Partition]:
    """The attached partitions of `table`: MINVALUE first, then by low bound, DEFAULT last."""
    with _errors("", schema, table):
        rows = conn.execute(_CHILDREN, {"schema": schema, "table": table}).all()
    found = [_partition(name, child_schema, bound) for name, child_schema, bound in rows]
    return sorted(found, key=_order)


def due_partitions(parts: Iterable[Partition], cutoff: datetime) -> list[Partition]:
    """The partitions wholly before `cutoff` (upper bound at or before it)."""
    cutoff = _utc(cutoff)
    return [p for p in parts if not p.is_default and p.high is not None and p.high <= cutoff]


def detached(conn: Connection, schema: str | None, parent: str) -> list[DetachedPartition]:
    """The partitions of `parent` detached for retention and not yet dropped (wherever
    they live), by low bound. A table attached again is never one of them."""
    with _errors("", schema, parent):
        home = _schema(conn, schema)
        return [d for d in _recorded(conn) if d.parent == f"{home}.{parent}"]


def detached_by_parent(conn: Connection, schema: str | None) -> dict[str, list[DetachedPartition]]:
    """The partitions detached for retention and not yet dropped, by the name of their
    parent in `schema` (None: the connection's current schema), by low bound; one read
    of the records however many tables ask."""
    with _errors("", schema, ""):
        records = _recorded(conn)
        if not records:
            return {}
        home = _schema(conn, schema)
    found: dict[str, list[DetachedPartition]] = {}
    prefix = f"{home}."
    for d in records:
        if d.parent.startswith(prefix):
            found.setdefault(d.parent[len(prefix) :], []).append(d)
    return found


def detached_parents(conn: Connection) -> dict[Name, Name]:
    """Every table detached for retention whose parent still exists -> that parent."""
    if conn.dialect.name != "postgresql":
        return {}
    records = _recorded(conn)
    if not records:
        return {}
    parents = {f"{s}.{t}": (s, t) for s, t in conn.execute(_PARTITIONED)}
    return {(d.schema, d.name): parents[d.parent] for d in records if d.parent in parents}


def partition_table(parent: Table, partition: Partition | DetachedPartition) -> TableClause:
    """`partition` as a table with `parent`'s columns (to select from it directly)."""
    columns = [column(c.name, c.type) for c in parent.columns]
    return table(partition.name, *columns, schema=partition.schema)


def partition_rows(
    conn: Connection,
    partition: Partition | DetachedPartition,
    *,
    parent: Table | None = None,
    where: ColumnElement[bool] | None = None,
) -> int:
    """The rows of `partition`; with `where` (built on `parent`'s columns) the rows that
    match it."""
    if parent is None:
        child = table(partition.name, schema=partition.schema)
    else:
        child = partition_table(parent, partition)
    query = select(func.count()).select_from(child)
    if where is not None:
        if parent is None:
            raise TypeError("a condition on a partition needs the parent table it is built on")
        query = query.where(_moved(where, parent, child))
    with _errors("", partition.schema, partition.name):
        return int(conn.execute(query).scalar_one())


def holds_rows(
    conn: Connection,
    partition: Partition | DetachedPartition,
    parent: Table,
    where: ColumnElement[bool],
) -> bool:
    """Whether any row of `partition` matches `where` (built on `parent`'s columns), e.g.
    a row of a subject under a legal hold. Stops at the first."""
    child = partition_table(parent, partition)
    query = select(exists().select_from(child).where(_moved(where, parent, child)))
    with _errors("", partition.schema, partition.name):
        return bool(conn.execute(query).scalar())


def delete_matching(
    conn: Connection,
    partition: Partition | DetachedPartition,
    parent: Table,
    where: ColumnElement[bool],
) -> int:
    """Delete the rows of `partition` matching `where` (built on `parent`'s columns),
    e.g. an erased subject's rows in a partition detached for retention; how many."""
    child = partition_table(parent, partition)
    with _errors("", partition.schema, partition.name):
        return int(conn.execute(delete(child).where(_moved(where, parent, child))).rowcount)


# --- changing --------------------------------------------------------------------------


def detach(
    engine: Engine,
    schema: str | None,
    table: str,
    partition: Partition,
    *,
    policy: str,
    now: datetime,
    grace_days: int,
    lock_timeout_ms: int,
    source: str = "",
) -> None:
    """Detach `partition` from `table` and record it (see the module), in one short
    transaction. A partition no longer attached (detached before, or gone) is left as it
    is; one whose bounds changed since it was listed is refused."""
    _require_postgres(engine)
    with _errors(source, schema, table), engine.begin() as conn:
        _lock_timeout(conn, lock_timeout_ms)
        home = _schema(conn, schema)
        parent_sql = _quoted(conn.dialect, home, table)
        _ddl(conn, f"LOCK TABLE {parent_sql} IN ACCESS EXCLUSIVE MODE")
        child_schema = partition.schema or home
        current = _attached(conn, home, table, child_schema, partition.name)
        if current is None:
            return
        if current.is_default or current.high is None:
            raise UnsupportedError(f"partition {partition.name} has no upper bound: never detached")
        if (current.low, current.high) != (partition.low, partition.high):
            raise UnsupportedError(f"partition {partition.name} changed since it was listed")
        child_sql = _quoted(conn.dialect, child_schema, partition.name)
        now = _utc(now)
        bounds = f"{_bound_text(current.low, 'MINVALUE')}..{_bound_text(current.high, 'MAXVALUE')}"
        comment = (
            f"{PREFIX}detached-at={now.isoformat()}"
            f" drop-after={(now + timedelta(days=grace_days)).isoformat()}"
            f" policy={'_'.join(policy.split())} parent={home}.{table} bounds={bounds}"
        )
        _ddl(conn, f"ALTER TABLE {parent_sql} DETACH PARTITION {child_sql}")
        _ddl(conn, f"COMMENT ON TABLE {child_sql} IS {_string(conn.dialect, comment)}")


def drop_expired(
    engine: Engine,
    schema: str | None,
    parent: str,
    now: datetime,
    lock_timeout_ms: int,
    *,
    keep: Callable[[Connection, DetachedPartition], bool] | None = None,
    source: str = "",
) -> Dropped:
    """DROP each partition detached from `parent` whose grace period is over at `now`,
    one short transaction each, counting its rows first. `keep` (e.g. "holds a row under
    a legal hold") is asked inside that transaction, the table locked: True keeps it."""
    _require_postgres(engine)
    now = _utc(now)
    with _errors(source, schema, parent):
        with engine.connect() as conn:
            due = [d for d in detached(conn, schema, parent) if d.drop_after <= now]
        names: list[str] = []
        rows = 0
        for record in due:
            with engine.begin() as conn:
                _lock_timeout(conn, lock_timeout_ms)
                child_sql = _quoted(conn.dialect, record.schema, record.name)
                _ddl(conn, f"LOCK TABLE {child_sql} IN ACCESS EXCLUSIVE MODE")
                if record not in detached(conn, schema, parent):  # attached again meanwhile
                    continue
                if keep is not None and keep(conn, record):
                    continue
                rows += partition_rows(conn, record)
                _ddl(conn, f"DROP TABLE {child_sql}")
                names.append(f"{record.schema}.{record.name}")
    return Dropped(tuple(names), rows)


def reattach(
    engine: Engine,
    schema: str | None,
    parent: str,
    name: str,
    *,
    lock_timeout_ms: int = 0,
    source: str = "",
) -> None:
    """Attach the detached partition `name` to `parent` again with its recorded bounds
    and forget the record. A partition already attached is left as it is."""
    _require_postgres(engine)
    with _errors(source, schema, parent), engine.begin() as conn:
        _lock_timeout(conn, lock_timeout_ms)
        home = _schema(conn, schema)
        found = [d for d in detached(conn, home, parent) if d.name == name]
        if not found:
            if any(p.name == name for p in partitions(conn, home, parent)):
                return
            raise NotFoundError(f"no partition {name} detached from {home}.{parent}")
        if len(found) > 1:
            raise UnsupportedError(f"partition {name} is detached in several schemas")
        [record] = found
        child_sql = _quoted(conn.dialect, record.schema, record.name)
        low = _literal(record.low, "MINVALUE")
        high = _literal(record.high, "MAXVALUE")
        _ddl(
            conn,
            f"ALTER TABLE {_quoted(conn.dialect, home, parent)} ATTACH PARTITION"
            f" {child_sql} FOR VALUES FROM ({low}) TO ({high})",
        )
        _ddl(conn, f"COMMENT ON TABLE {child_sql} IS NULL")


# --- helpers ---------------------------------------------------------------------------


def _partition(name: str, schema: str, bound: str) -> Partition:
    if bound == "DEFAULT":
        return Partition(name, schema, None, None, is_default=True)
    match = _RANGE.fullmatch(bound)
    if match is None:
        raise UnsupportedError(f"partition {name} is not a RANGE partition")
    return Partition(name, schema, _value(name, match["low"]), _value(name, match["high"]))


def _value(partition: str, sql: str) -> datetime | None:
    """One bound of a single-column range: MINVALUE/MAXVALUE/±infinity -> None."""
    match = _VALUE.fullmatch(sql.strip())
    if match is None:
        raise UnsupportedError(f"partition {partition} is bounded on more than one column")
    value = match["text"]
    if value is None or value in ("infinity", "-infinity"):
        return None
    try:
        return _utc(datetime.fromisoformat(value.replace("''", "'")))
    except ValueError as exc:  # the bound itself stays out of the message: it may be personal
        raise UnsupportedError(f"partition {partition} has a bound that is not a date") from exc


def _attached(
    conn: Connection, schema: str, table: str, child_schema: str, name: str
) -> Partition | None:
    """The partition `child_schema.name` of `schema.table`, if it is attached to it."""
    found = [
        p for p in partitions(conn, schema, table) if (p.schema, p.name) == (child_schema, name)
    ]
    return found[0] if found else None


def _order(p: Partition) -> tuple[int, datetime]:
    rank = 2 if p.is_default else (0 if p.low is None else 1)
    return rank, p.low or datetime.min.replace(tzinfo=UTC)


def _recorded(conn: Connection) -> list[DetachedPartition]:
    found = [_record(s, n, comment) for s, n, comment in conn.execute(_RECORDED)]
    records = [d for d in found if d is not None]
    return sorted(records, key=lambda d: (d.low or datetime.min.replace(tzinfo=UTC), d.name))


def _record(schema: str, name: str, comment: str) -> DetachedPartition | None:
    """The comment's record; None when it does not parse (such a table is never dropped)."""
    fields = dict(t.split("=", 1) for t in comment[len(PREFIX) :].split() if "=" in t)
    try:
        low, high = fields["bounds"].split("..", 1)
        return DetachedPartition(
            name=name,
            schema=schema,
            parent=fields["parent"],
            policy=fields.get("policy", ""),
            detached_at=_utc(datetime.fromisoformat(fields["detached-at"])),
            drop_after=_utc(datetime.fromisoformat(fields["drop-after"])),
            low=None if low == "MINVALUE" else _utc(datetime.fromisoformat(low)),
            high=None if high == "MAXVALUE" else _utc(datetime.fromisoformat(high)),
        )
    except (KeyError, ValueError):
        return None


def _moved(where: ColumnElement[bool], parent: Table, child: TableClause) -> ColumnElement[bool]:
    """`where` with `parent`'s columns replaced by `child`'s of the same name."""

    def swap(element: Any, **_kw: Any) -> Any:
        if isinstance(element, Column) and element.table is parent:
            return child.c[element.name]
        return None

    return replacement_traverse(where, {}, swap)


def _schema(conn: Connection, schema: str | None) -> str:
    return schema or str(conn.execute(text("SELECT current_schema()")).scalar_one())


def _lock_timeout(conn: Connection, ms: int) -> None:
    """``SET LOCAL lock_timeout`` (0: keep the session's)."""
    if ms > 0:
        conn.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": f"{ms}ms"})


def _ddl(conn: Connection, sql: str) -> None:
    """Run a statement PostgreSQL takes no bound parameters in (LOCK, ALTER, COMMENT,
    DROP): names quoted by the dialect, values rendered from our own datetimes or as
    dialect literals. Sent as it is (a ``:`` in a name is no parameter), with an empty
    parameter set, so the driver undoes the ``%%`` the dialect's quoting wrote for ``%``."""
    conn.exec_driver_sql(sql, {})


def _quoted(dialect: Dialect, schema: str, name: str) -> str:
    preparer = dialect.identifier_preparer
    return f"{preparer.quote_schema(schema)}.{preparer.quote(name)}"


def _string(dialect: Dialect, value: str) -> str:
    """`value` as a SQL string literal (COMMENT takes no bound parameter)."""
    compiled = literal(value, String()).compile(
        dialect=dialect, compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


def _literal(value: datetime | None, open_end: str) -> str:
    """A bound for ATTACH (DDL takes no bound parameter): rendered from a datetime."""
    return open_end if value is None else f"'{value.isoformat()}'"


def _bound_text(value: datetime | None, open_end: str) -> str:
    return open_end if value is None else value.isoformat()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _require_postgres(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise UnsupportedError(f"partitions are PostgreSQL's; this is {engine.dialect.name}")


@contextmanager
def _errors(source: str, schema: str | None, table: str) -> Iterator[None]:
    """`translate_errors` under the source's name (or the table's when none is given)."""
    with translate_errors(source or (f"{schema}.{table}" if schema else table)):
        yield
