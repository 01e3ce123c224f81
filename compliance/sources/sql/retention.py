"""Retention in a SQL source: rows past a cutoff, deleted in key-range batches.

A sweep walks the table's key from the lowest key to the highest one there was when the
run started, `batch_size` keys at a time: it finds the next range's upper bound with one
index-only step from where it stopped (``WHERE key > :last ORDER BY key OFFSET n``, never
a rescan from the start), then deletes that range's expired rows in one short
transaction (the connection's ``lock_timeout`` and ``statement_timeout`` apply)::

    DELETE FROM t WHERE key > :last AND key <= :bound AND created_at < :cutoff
                   [AND <where>] [AND NOT <rows of held subjects>]

The cursor is the last key done and the highest key to visit, so a killed sweep resumes
where it stopped and a repeated batch deletes nothing twice. A key may be an identity
(``users.id`` is a user id): the sweep stores cursors sealed, never in the clear.

Legal holds arrive as `Held`: `whole` keeps everything; held subjects' identities
(recovered from their pseudonyms by `find_subjects`) are excluded through the ownership
rules, so a held customer's rows stay, whichever table reaches them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Table,
    and_,
    delete,
    func,
    not_,
    or_,
    select,
    text,
    true,
)

from compliance.errors import ManifestError, ValidationError
from compliance.identities import Identities, Identity, parse_identity, pseudonym
from compliance.retention.policy import (
    Batch,
    Held,
    Limits,
    Policy,
    PolicyPlan,
    PurgeResult,
    Status,
    SubjectBatch,
)
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import from_json, python_type, to_json
from compliance.sources.sql.query import Selector, mine, shared_rows
from compliance.sources.sql.read import count_rows

PLAN_BATCHES = 10  # batches a plan lists; the rest are counted
SCAN_ROWS = 5000  # identity values read per round when recovering held subjects


# --- the pieces of a policy's query -----------------------------------------------------


def key_column(graph: Graph, policy: Policy) -> Column[Any]:
    """The single-column key a policy's batches range over."""
    names = graph.keys[policy.location]
    if len(names) != 1:
        raise ManifestError(
            f"{policy.entry}: a retention policy needs a single-column key on"
            f' {policy.location!r} to batch by (declare one with key = ["id"])'
        )
    return graph.tables[policy.location].c[names[0]]


def expired(graph: Graph, policy: Policy, cutoff: datetime) -> ColumnElement[bool]:
    """Rows past `cutoff` that the policy's `where` selects."""
    table = graph.tables[policy.location]
    column = table.c[policy.column]
    parts = [column < bound(column, cutoff), *_filters(table, policy)]
    return and_(*parts)


def bound(column: Column[Any], moment: datetime) -> Any:
    """`moment` as the column compares it: naive UTC for a timestamp without time zone,
    the date for a date column."""
    moment = moment.astimezone(UTC)
    if python_type(column) is date:
        return moment.date()
    if not getattr(column.type, "timezone", False):
        return moment.replace(tzinfo=None)
    return moment


def _filters(table: Table, policy: Policy) -> Iterator[ColumnElement[bool]]:
    for name, op, value in policy.where:
        column = table.c[name]
        if op == "=":
            yield column == value
        elif op == "not":
            yield or_(column != value, column.is_(None))
        elif op == "in":
            yield column.in_(list(value))
        elif op == "not_in":
            yield or_(column.not_in(list(value)), column.is_(None))
        elif op == "is_null":
            yield column.is_(None) if value else column.is_not(None)


def held_rows(graph: Graph, policy: Policy, held: Held) -> ColumnElement[bool] | None:
    """The rows of the policy's table that belong to held subjects (None: no such row)."""
    if not held.identities:
        return None
    selector = Selector(graph, held.identities)
    parts = [
        p
        for p in (mine(selector, policy.location), shared_rows(selector, policy.location))
        if p is not None
    ]
    return or_(*parts) if parts else None


# --- plan, status -------------------------------------------------------------------


def plan_rows(
    source: SourceHandle, policy: Policy, cutoff: datetime, held: Held, batch_size: int
) -> PolicyPlan:
    """Counts of what a sweep at `cutoff` would delete and keep held, and its batches."""
    graph = source.graph
    table = graph.tables[policy.location]
    due_where = expired(graph, policy, cutoff)
    holding = held_rows(graph, policy, held)
    with source.connect() as conn:
        total = count_rows(conn, table, due_where)
        kept = total if held.whole else _count_held(conn, table, due_where, holding)
        batches = _batches(conn, graph, policy, batch_size)
        count = count_rows(conn, table, true())
    more = max(0, -(-count // batch_size) - len(batches))
    note = f"{len(batches) + more} batch(es) of {batch_size} keys" + (
        f" ({more} more not listed)" if more else ""
    )
    return PolicyPlan(policy.name, cutoff, total - kept, kept, batches, note)


def _count_held(
    conn: Connection, table: Table, due: ColumnElement[bool], holding: ColumnElement[bool] | None
) -> int:
    return 0 if holding is None else count_rows(conn, table, and_(due, holding))


def _batches(conn: Connection, graph: Graph, policy: Policy, size: int) -> list[Batch]:
    key = key_column(graph, policy)
    low = conn.execute(select(func.min(key))).scalar()
    found: list[Batch] = []
    last = None
    while low is not None and len(found) < PLAN_BATCHES:
        upper = _next_bound(conn, key, last, size)
        high = upper if upper is not None else conn.execute(select(func.max(key))).scalar()
        found.append(Batch(to_json(low), to_json(high), size))
        if upper is None:
            break
        last, low = upper, upper
    return found


def status_rows(source: SourceHandle, policy: Policy, now: datetime, held: Held) -> Status:
    """The oldest row still present, and how many rows are past the limit (held ones too)."""
    graph = source.graph
    table = graph.tables[policy.location]
    column = table.c[policy.column]
    filters = list(_filters(table, policy))
    due_where = expired(graph, policy, policy.cutoff(now))
    holding = held_rows(graph, policy, held)
    with source.connect() as conn:
        oldest = conn.execute(select(func.min(column)).where(and_(true(), *filters))).scalar()
        overdue = count_rows(conn, table, due_where)
        kept = overdue if held.whole else _count_held(conn, table, due_where, holding)
    return Status(policy.name, policy.days, _aware(oldest), overdue, kept)


def _aware(value: Any) -> datetime | None:
    """A column's value as an aware UTC datetime (SQLite may hand back text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


# --- purge --------------------------------------------------------------------------


def purge_rows(
    source: SourceHandle,
    policy: Policy,
    cutoff: datetime,
    cursor: Mapping[str, Any],
    limits: Limits,
    held: Held,
) -> PurgeResult:
    """Delete expired rows batch by batch from `cursor`, within `limits`."""
    graph = source.graph
    table = graph.tables[policy.location]
    key = key_column(graph, policy)
    due_where = expired(graph, policy, cutoff)
    if held.whole:
        with source.connect() as conn:
            return PurgeResult(True, dict(cursor), held=count_rows(conn, table, due_where))
    holding = held_rows(graph, policy, held)
    walk = _Walk.start(source, key, cursor, limits.batch_size)
    deleted = kept = batches = 0
    timings: list[float] = []
    started = time.monotonic()
    while not walk.finished:
        began = time.perf_counter()
        with source.connect() as conn:
            upper = walk.next_upper(conn)
            in_range = walk.range(upper)
            if holding is not None:
                kept += count_rows(conn, table, and_(in_range, due_where, holding))
            goes = and_(in_range, due_where, *(() if holding is None else (not_(holding),)))
            deleted += conn.execute(delete(table).where(goes)).rowcount
        timings.append((time.perf_counter() - began) * 1000)
        walk.advance(upper, timings[-1])
        batches += 1
        if _stop(limits, deleted, started) or batches == limits.max_batches:
            break
        if limits.pause_seconds:
            time.sleep(limits.pause_seconds)
    return PurgeResult(walk.finished, walk.cursor(), deleted, kept, 0, batches, timings)


def _stop(limits: Limits, done: int, started: float) -> bool:
    if limits.max_items is not None and done >= limits.max_items:
        return True
    return limits.max_seconds is not None and time.monotonic() - started >= limits.max_seconds


TARGET_BATCH_MS = 30.0  # an integer key's batches grow or shrink towards this duration


class _Walk:
    """A walk over a key from `last` (exclusive; None: the start) to `high` (inclusive),
    the highest key when the run started.

    An integer key walks by arithmetic: each batch covers `step` key values, and `step`
    adapts after every batch towards `TARGET_BATCH_MS` (from a quarter of the configured
    batch size, within 1/8 and 2 times it), so sparse and dense ranges both make short
    transactions and no batch reads the index to find its end. Other keys (uuid, text,
    timestamps) find each batch's end with one step along the index (`_next_bound`)."""

    def __init__(self, key: Column[Any], last: Any, high: Any, size: int, step: int) -> None:
        self.key, self.last, self.high, self.size, self.step = key, last, high, size, step
        self.integer = python_type(key) is int
        self.finished = high is None or (last is not None and last >= high)

    @classmethod
    def start(
        cls, source: SourceHandle, key: Column[Any], cursor: Mapping[str, Any], size: int
    ) -> _Walk:
        step = int(cursor.get("step") or max(1, size // 4))  # start small, then adapt
        if "high" in cursor:
            last = cursor.get("last")
            low = None if last is None else from_json(key, last)
            return cls(key, low, from_json(key, cursor["high"]), size, step)
        with source.connect() as conn:
            low, high = conn.execute(select(func.min(key), func.max(key))).one()
        start = low - 1 if python_type(key) is int and low is not None else None
        return cls(key, start, high, size, step)

    def next_upper(self, conn: Connection) -> Any:
        """The key ending the next batch (None: the batch runs to `high`)."""
        if self.integer and self.last is not None:
            upper = self.last + self.step
        else:
            upper = _next_bound(conn, self.key, self.last, self.size)
        return None if upper is None or upper >= self.high else upper

    def range(self, upper: Any) -> ColumnElement[bool]:
        low = true() if self.last is None else self.key > self.last
        return and_(low, self.key <= (self.high if upper is None else upper))

    def advance(self, upper: Any, elapsed_ms: float) -> None:
        self.last = self.high if upper is None else upper
        self.finished = upper is None
        if self.integer:
            factor = min(1.5, max(0.5, TARGET_BATCH_MS / max(elapsed_ms, 1.0)))
            self.step = int(min(self.size * 2, max(self.size // 8 or 1, self.step * factor)))

    def cursor(self) -> dict[str, Any]:
        return {"last": to_json(self.last), "high": to_json(self.high), "step": self.step}


def _next_bound(conn: Connection, key: Column[Any], last: Any, size: int) -> Any:
    """The `size`-th key after `last`: one step along the key's index."""
    query = select(key).order_by(key).offset(size - 1).limit(1)
    if last is not None:
        query = query.where(key > last)
    return conn.execute(query).scalar()


# --- subjects -----------------------------------------------------------------------


def due_subjects(
    source: SourceHandle, policy: Policy, cutoff: datetime, cursor: Mapping[str, Any], limit: int
) -> SubjectBatch:
    """Up to `limit` subjects whose row is past `cutoff`, in key order from `cursor`,
    each as the identities its row's identity columns hold."""
    graph = source.graph
    table = graph.tables[policy.location]
    key = key_column(graph, policy)
    idents = [c for c in graph.rules[policy.location].identities if c.resolve]
    query = (
        select(key, *[table.c[c.column] for c in idents])
        .where(expired(graph, policy, cutoff))
        .order_by(key)
        .limit(limit)
    )
    if cursor.get("last") is not None:
        query = query.where(key > from_json(key, cursor["last"]))
    with source.connect() as conn:
        rows = conn.execute(query).all()
    subjects = [_identities(idents, row[1:]) for row in rows]
    last = to_json(rows[-1][0]) if rows else cursor.get("last")
    return SubjectBatch([s for s in subjects if s], {"last": last}, len(rows) < limit)


def _identities(columns: Sequence[Any], values: Sequence[Any]) -> Identities:
    found = []
    for column, value in zip(columns, values, strict=True):
        if value is None:
            continue
        try:
            found.append(parse_identity(column.type, str(value)))
        except ValidationError:
            continue  # a malformed value names nobody we could look up
    return Identities.of(found)


def find_subjects(source: SourceHandle, pseudonyms: frozenset[str], key: bytes) -> Identities:
    """The identities, in this source, whose pseudonyms are `pseudonyms` (held subjects):
    every identity column's values are read and hashed. Only in memory, never stored."""
    graph = source.graph
    found: set[Identity] = set()
    with source.connect() as conn:
        for name, rule in graph.rules.items():
            for column in rule.identities:
                found |= _matching(
                    conn, graph.tables[name].c[column.column], column.type, pseudonyms, key
                )
    return Identities.of(found)


def _matching(
    conn: Connection, column: Column[Any], kind: str, pseudonyms: frozenset[str], key: bytes
) -> set[Identity]:
    found = set()
    result = conn.execution_options(yield_per=SCAN_ROWS).execute(
        select(column).where(column.is_not(None)).distinct()
    )
    for (value,) in result:
        try:
            identity = parse_identity(kind, str(value))
        except ValidationError:
            continue
        if pseudonym(key, identity) in pseudonyms:
            found.add(identity)
    return found


def split_ranges(
    source: SourceHandle, policy: Policy, parts: int, min_rows: int
) -> list[dict[str, Any]]:
    """Cursors of `parts` key ranges of about equal size, for workers to sweep side by
    side; one range when the table holds fewer than `min_rows` rows (PostgreSQL: the
    planner's estimate). An integer key is split by value, others along the index."""
    graph = source.graph
    key = key_column(graph, policy)
    table = graph.tables[policy.location]
    with source.connect() as conn:
        count = _estimate(conn, table)
        low, high = conn.execute(select(func.min(key), func.max(key))).one()
        if parts <= 1 or count < min_rows or high is None:
            return [{}]
        if python_type(key) is int:
            width = (high - low + 1) / parts
            bounds = [low - 1 + int(width * i) for i in range(1, parts)]
            first: Any = low - 1
        else:
            step = max(1, count // parts)
            bounds = [
                conn.execute(select(key).order_by(key).offset(step * i - 1).limit(1)).scalar()
                for i in range(1, parts)
            ]
            first = None
    edges = [first, *sorted({b for b in bounds if b is not None and b < high}), high]
    return [{"last": to_json(lo), "high": to_json(up)} for lo, up in itertools.pairwise(edges)]


def _estimate(conn: Connection, table: Table) -> int:
    """How many rows `table` holds: PostgreSQL's estimate (no scan), else a count."""
    if conn.dialect.name == "postgresql":
        estimate = conn.execute(
            text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:name AS regclass)"),
            {"name": _qualified(conn, table)},
        ).scalar()
        if estimate is not None and estimate >= 0:
            return int(estimate)
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _qualified(conn: Connection, table: Table) -> str:
    quote = conn.dialect.identifier_preparer.quote
    name = quote(table.name)
    return f"{quote(table.schema)}.{name}" if table.schema else name
