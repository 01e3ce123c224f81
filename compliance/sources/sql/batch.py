"""Many subjects in one read per table: the reads of a batch of exports, shared.

A coalesced batch (`compliance.coalesce`) resolves its subjects together and reads their
rows together: one statement per table (and resolve round) for all of them, with the
values each subject's own statement would bind merged into one list per column. What
comes back is split by subject in Python with the same test each subject's statement
makes in SQL: a row is a subject's when a value it was looked up by is one of that
subject's values. For an identity column the value compared is the one the database
computed (``lower(email)`` is selected beside the row), for a reference the columns as
read; Python's equality is never looser than the database's for values it returned.

A row no subject claims means the two tests disagree (a collation that folds case or
pads, a type the driver returns differently): the whole read is dropped (`split`
returns None) and
each subject reads that table, and what depends on it, on its own, as a request alone
does. So is a read past its bounds (more rows, or more values in a list, than one
statement may carry). Batched reads only fill the memo of each subject's `Subject`;
everything an export decides (which rows are its own, which shared rows only it uses)
is still decided per subject, from those rows.

A table whose rows point at shared rows the subjects' other rows already reach (their
users name their addresses) is read once for both questions (`_read_ahead`): its own
rows, and every row pointing at those shared rows, which tells who else uses them. A row
that only points there comes with its key and reference columns alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Table, case, false, null, or_, select

from compliance.errors import ValidationError
from compliance.identities import Identities, Identity, parse_identity
from compliance.sources.sql.found import (
    BUFFER_ROWS,
    Found,
    base_columns,
    exported_columns,
    found_of,
)
from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import Key, chunk_size, placeholder_key, values_in
from compliance.sources.sql.manifest import Edge
from compliance.sources.sql.query import identity_terms
from compliance.sources.sql.subject import POINTING_ROWS, Pointing, Subject

BATCH_ROWS = 20_000  # rows one batched read may return; more: each subject reads alone
FULL_BYTES = 8 * 1024 * 1024  # exported values one batched read keeps; past that, keys only
MAX_IDENTITIES = 1000  # a subject linked to more is resolved alone (and refused there)


@dataclass(frozen=True)
class Term:
    """One way a statement looks rows up: `exprs` (columns, or ``lower(column)``) equal
    one of `values`; `identity`: an identity column, compared as ``IN`` like
    `query.identity_match` does."""

    label: str
    exprs: tuple[ColumnElement[Any], ...]
    values: frozenset[Key]
    identity: bool = False


Probe = Sequence[Term]  # one subject's terms in one table


def split(
    conn: Connection,
    graph: Graph,
    table: Table,
    columns: Sequence[ColumnElement[Any]],
    probes: Sequence[Probe],
    limit: int = BATCH_ROWS,
) -> list[list[Mapping[str, Any]]] | None:
    """The rows each probe's own statement would find, read with one statement; None
    when that cannot be trusted to be the same, or when there are more than `limit`."""
    merged = _merged(probes)
    if not merged:
        return [[] for _ in probes]
    where, tags = [], []
    for label, (term, values) in merged.items():
        if len(values) > chunk_size(graph.dialect, len(term.exprs)):
            return None  # more values than one statement binds
        where.append(_condition(term, values, graph.dialect))
        tags += [e.label(_name(label, i)) for i, e in enumerate(term.exprs)]
    query = select(*columns, *tags).where(or_(*where)).limit(limit + 1)
    found: list[list[Mapping[str, Any]]] = [[] for _ in probes]
    rows = cast(Sequence[Mapping[str, Any]], conn.execute(query).mappings().all())
    if len(rows) > limit:
        return None
    for row in rows:
        claimed = False
        for at, probe in enumerate(probes):
            if any(_tag(row, t) in t.values for t in probe):
                found[at].append(row)
                claimed = True
        if not claimed:  # no subject's own lookup accounts for it
            return None
    return found


def _merged(probes: Sequence[Probe]) -> dict[str, tuple[Term, list[Key]]]:
    """Per label, the term and the values of every probe's term of that label."""
    merged: dict[str, tuple[Term, set[Key]]] = {}
    for probe in probes:
        for term in probe:
            merged.setdefault(term.label, (term, set()))[1].update(term.values)
    return {label: (term, sorted(v, key=repr)) for label, (term, v) in merged.items()}


def _condition(term: Term, values: list[Key], dialect: str) -> ColumnElement[bool]:
    if term.identity:
        return term.exprs[0].in_([v[0] for v in values])
    return values_in(list(term.exprs), values, dialect)


def _tag(row: Mapping[str, Any], term: Term) -> Key:
    return tuple(row[_name(term.label, i)] for i in range(len(term.exprs)))


def _name(label: str, i: int) -> str:
    return f"_gdpr_{label}_{i}"  # beside the table's own columns, never one of them


# --- resolving ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A subject's identities at the fixpoint, and the own rows of the tables the resolve
    read in full on the way (`identity_only`): every identity at the fixpoint was looked
    up in some round, so those rows are all the rows an export of it would read there."""

    identities: Identities
    own: Mapping[str, Found]


class Kept:
    """Identity tables' rows a resolve read (`Resolved.own`), kept for the export or
    erase plan of the same identities that follows; `max_age` seconds at most (older
    ones are read again), each taken once."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.clock = clock
        self._kept: dict[Identities, tuple[float, Mapping[str, Found]]] = {}

    def keep(self, found: Sequence[Resolved | None], at: float) -> None:
        """Keep what a resolve that began at `at` (a clock reading) found."""
        self._drop_old()
        self._kept.update((r.identities, (at, r.own)) for r in found if r is not None)

    def take(self, identities: Identities) -> tuple[float, Mapping[str, Found]] | None:
        """(when read, rows per table) for `identities`, if read within `max_age`."""
        self._drop_old()
        return self._kept.pop(identities, None)

    def clear(self) -> None:
        self._kept.clear()

    def _drop_old(self) -> None:
        oldest = self.clock() - self.max_age
        for identities in [i for i, (at, _) in self._kept.items() if at < oldest]:
            del self._kept[identities]


def resolve_many(
    conn: Connection, graph: Graph, given: Sequence[Identities], rounds: int
) -> list[Resolved | None]:
    """Each subject's identities linked to `given`'s through rows they match, to a
    fixpoint, as `read.resolve` finds them one subject at a time; None for a subject
    this could not settle (it resolves alone)."""
    current, new = list(given), list(given)
    settled: list[Identities | None] = [None] * len(given)
    seen: list[dict[str, dict[Key, Mapping[str, Any]]]] = [{} for _ in given]
    partial: set[str] = set()  # identity tables some round read without their rows
    active = list(range(len(given)))
    for _ in range(rounds):
        found = {i: set(current[i].items) for i in active}
        for table in graph.rules:
            linked = _linked_many(conn, graph, table, {i: new[i] for i in active})
            if linked is None:
                # the unsettled resolve alone; no table's rows are kept
                return _with_rows(graph, settled, seen, partial=set(graph.rules))
            rows_of, full = linked
            if not full:
                partial.add(table)
            for i, rows in rows_of.items():
                found[i] |= _identities(graph, table, rows)
                if full:
                    _keep(graph, table, seen[i].setdefault(table, {}), rows)
        still = []
        for i in active:
            added = found[i] - set(current[i].items)
            if len(found[i]) > MAX_IDENTITIES:
                continue  # alone, it is refused with its reason
            if not added:
                settled[i] = current[i]
                continue
            current[i], new[i] = Identities(frozenset(found[i])), Identities(frozenset(added))
            still.append(i)
        active = still
        if not active:
            break
    return _with_rows(graph, settled, seen, partial)


def identity_only(graph: Graph, table: str) -> bool:
    """Whether `table`'s own rows are exactly the rows its resolving lookups match: every
    identity column resolves, and no owned reference or placeholder row adds or removes."""
    rule = graph.rules[table]
    return (
        bool(rule.identities)
        and all(i.resolve for i in rule.identities)
        and not graph.owned_parents(table)
        and placeholder_key(graph, table) is None
    )


def _keep(
    graph: Graph, table: str, into: dict[Key, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> None:
    keys = graph.keys[table]
    for row in rows:
        into.setdefault(tuple(row[k] for k in keys), row)


def _with_rows(
    graph: Graph,
    settled: Sequence[Identities | None],
    seen: Sequence[Mapping[str, Mapping[Key, Mapping[str, Any]]]],
    partial: set[str],
) -> list[Resolved | None]:
    """The settled subjects with their identity tables' rows, kept as `_read` keeps them."""
    tables = [t for t in graph.rules if identity_only(graph, t) and t not in partial]
    kept = {t: _kept(graph, t, [list(rows.get(t, {}).values()) for rows in seen]) for t in tables}
    return [
        None if done is None else Resolved(done, {t: kept[t][i] for t in tables})
        for i, done in enumerate(settled)
    ]


def _linked_many(
    conn: Connection, graph: Graph, table: str, subjects: Mapping[int, Identities]
) -> tuple[dict[int, list[Mapping[str, Any]]], bool] | None:
    """The rows of `table` each subject's resolving lookups match, with its identity
    columns, and whether they hold every column an export needs too: they do for an
    `identity_only` table while they are few (`BUFFER_ROWS` a subject, as `read_rows`
    keeps them); else they are read again with the identity columns alone."""
    at = list(subjects)
    probes = [_terms(identity_terms(graph, table, subjects[i], resolving=True)) for i in at]
    if not any(probes):
        return {}, True  # none of theirs can be there
    t = graph.tables[table]
    idents = [t.c[i.column] for i in graph.rules[table].identities if i.resolve]
    if identity_only(graph, table):
        wanted = _wanted(graph, table)
        names = {c.name for c in wanted}
        columns = [*wanted, *(c for c in idents if c.name not in names)]
        rows = split(conn, graph, t, columns, probes, limit=BUFFER_ROWS * len(at))
        if rows is not None:
            return dict(zip(at, rows, strict=True)), True
    rows = split(conn, graph, t, idents, probes)
    return None if rows is None else (dict(zip(at, rows, strict=True)), False)


def _terms(lookups: Sequence[tuple[str, ColumnElement[Any], list[Any]]]) -> list[Term]:
    return [
        Term(label, (expr,), frozenset((v,) for v in values), identity=True)
        for label, expr, values in lookups
    ]


def _identities(graph: Graph, table: str, rows: Sequence[Mapping[str, Any]]) -> set[Identity]:
    found = set()
    idents = [i for i in graph.rules[table].identities if i.resolve]
    for row in rows:
        for ident in idents:
            value = row[ident.column]
            if value is None:
                continue
            try:
                found.add(parse_identity(ident.type, str(value)))
            except ValidationError:
                continue  # a malformed value in the data cannot be a subject's identity
    return found


# --- own rows ----------------------------------------------------------------------------


def read_own(conn: Connection, graph: Graph, subjects: Sequence[Subject]) -> None:
    """Fill each subject's own rows, table by table parents first, one read per table
    for all of them; a table that cannot be read for all (`split`) is left to each
    subject, as are the tables below it."""
    for table in reversed(graph.order):
        ready = [s for s in subjects if not s.known(table) and _parents_known(graph, s, table)]
        if not ready:
            continue
        rows = _own_rows(conn, graph, table, ready)
        for subject, found in zip(ready, rows or [], strict=False):
            subject.remember_own(table, found)


def _parents_known(graph: Graph, subject: Subject, table: str) -> bool:
    return all(subject.known(e.parent) for e in graph.owned_parents(table))


def _own_rows(
    conn: Connection, graph: Graph, table: str, subjects: Sequence[Subject]
) -> list[Found] | None:
    t = graph.tables[table]
    probes = []
    for subject in subjects:
        terms = _terms(identity_terms(graph, table, subject.identities))
        for n, e in enumerate(graph.owned_parents(table)):
            values = subject.known_own(e.parent).values(e.parent_cols)
            exprs = tuple(t.c[c] for c in e.child_cols)
            terms.append(Term(f"p{n}", exprs, frozenset(values)))
        probes.append([term for term in terms if term.values])
    rows = _read_ahead(conn, graph, table, subjects, probes)
    if rows is None:
        rows = _read(conn, graph, table, probes)
    spare = placeholder_key(graph, table)
    if rows is not None and spare is not None:  # the placeholder row is nobody's
        rows = [found.without([spare]) for found in rows]
    return rows


def _read_ahead(
    conn: Connection,
    graph: Graph,
    table: str,
    subjects: Sequence[Subject],
    probes: Sequence[Probe],
) -> list[Found] | None:
    """`_read`, and in the same statement the rows of `table` pointing at the shared rows
    each subject's other rows already reach (`Subject.ahead`), kept as its `Pointing`
    for `read_shared`; None when no subject reaches any, or the read cannot be split."""
    t = graph.tables[table]
    ahead = [dict(subject.ahead(table)) for subject in subjects]
    edges = sorted({e for found in ahead for e in found}, key=repr)
    if not edges:
        return None
    terms = {e: (f"a{n}", tuple(t.c[c] for c in e.child_cols)) for n, e in enumerate(edges)}
    wide = [
        [*probe, *(Term(*terms[e], values) for e, values in found.items())]
        for probe, found in zip(probes, ahead, strict=True)
    ]
    limit = (BUFFER_ROWS + POINTING_ROWS * len(edges)) * len(probes)
    parts = split(conn, graph, t, _own_wanted(graph, table, probes), wide, limit)
    if parts is None:
        return None
    own = [
        [row for row in part if any(_tag(row, term) in term.values for term in probe)]
        for probe, part in zip(probes, parts, strict=True)
    ]
    if sum(map(len, own)) > BUFFER_ROWS * len(probes):
        return None  # more than `_read` keeps: read as it does
    names = graph.keys[table]
    for subject, found, part in zip(subjects, ahead, parts, strict=True):
        for e, values in found.items():
            term = Term(*terms[e], values)
            rows = [(_tag(row, term), tuple(row[n] for n in names)) for row in part]
            rows = [(cols, key) for cols, key in rows if cols in values]
            if len(rows) <= POINTING_ROWS:
                subject.remember_pointing(e, Pointing(values, rows))
    return _kept(graph, table, own)


def _read(
    conn: Connection, graph: Graph, table: str, probes: Sequence[Probe]
) -> list[Found] | None:
    """Each probe's rows of `table` as `found.read_rows` keeps them for an export: the
    exported rows too while they are few (`BUFFER_ROWS` a probe) and their values stay
    within `FULL_BYTES` in all; else their keys alone, read again (the export reads the
    rows by key), so a read never holds more than that many whole rows."""
    t = graph.tables[table]
    parts = split(conn, graph, t, _wanted(graph, table), probes, BUFFER_ROWS * len(probes))
    if parts is not None:
        return _kept(graph, table, parts)
    names = base_columns(graph, table)
    keys = split(conn, graph, t, [t.c[n] for n in names], probes)
    width = len(graph.keys[table])
    return None if keys is None else [found_of(names, width, [], p, full=False) for p in keys]


def _own_wanted(graph: Graph, table: str, probes: Sequence[Probe]) -> list[ColumnElement[Any]]:
    """`_wanted`, but a row that is none of `probes`' own (one that only points at a
    shared row) comes with its key and reference columns alone, the others NULL."""
    t = graph.tables[table]
    names = base_columns(graph, table)
    conditions = [_condition(term, v, graph.dialect) for term, v in _merged(probes).values()]
    own = or_(*conditions) if conditions else false()
    shown = [c for c in exported_columns(graph, table) if c.name not in names]
    narrowed = [case((own, c), else_=null()).label(c.name) for c in shown]
    return [*(t.c[n] for n in names), *narrowed]


def _wanted(graph: Graph, table: str) -> list[ColumnElement[Any]]:
    """The columns an export's read of `table` selects: `Found`'s, then the exported."""
    t = graph.tables[table]
    names = base_columns(graph, table)
    shown = exported_columns(graph, table)
    return [t.c[n] for n in names] + [c for c in shown if c.name not in names]


def _kept(graph: Graph, table: str, parts: Sequence[Sequence[Mapping[str, Any]]]) -> list[Found]:
    names = base_columns(graph, table)
    shown = exported_columns(graph, table)
    keep = sum(_size(row, shown) for part in parts for row in part) <= FULL_BYTES
    width = len(graph.keys[table])
    return [found_of(names, width, shown, part, full=keep) for part in parts]


def _size(row: Mapping[str, Any], shown: Sequence[Any]) -> int:
    values = (row[c.name] for c in shown)
    return sum(len(v) if isinstance(v, str | bytes | bytearray) else 16 for v in values)


# --- shared rows -------------------------------------------------------------------------


def read_shared(conn: Connection, graph: Graph, subjects: Sequence[Subject]) -> None:
    """Fill each subject's reached rows of every shared table (one read per table), then
    the rows pointing at its candidates (one read per reference), for `Subject.alone`."""
    for table in graph.order:
        edges = graph.shared_from(table)
        ready = [s for s in subjects if edges and all(s.known(e.child) for e in edges)]
        if not ready:
            continue
        reached = _reached_rows(conn, graph, table, edges, ready)
        if reached is None:
            continue
        for subject, found in zip(ready, reached, strict=True):
            subject.remember_reached(conn, table, found)
        _read_pointing(conn, graph, table, ready)


def _reached_rows(
    conn: Connection, graph: Graph, table: str, edges: Sequence[Edge], subjects: Sequence[Subject]
) -> list[Found] | None:
    t = graph.tables[table]
    probes = []
    for subject in subjects:
        terms = []
        for n, e in enumerate(edges):
            values = subject.known_own(e.child).values(e.child_cols)
            terms.append(Term(f"s{n}", tuple(t.c[c] for c in e.parent_cols), frozenset(values)))
        probes.append([term for term in terms if term.values])
    return _read(conn, graph, table, probes)


def _read_pointing(conn: Connection, graph: Graph, table: str, subjects: Sequence[Subject]) -> None:
    """Per reference into `table` from a registered table, the rows pointing at any
    subject's candidates, with their keys: each subject then tells which of them stay."""
    for e in graph.incoming(table):
        child = graph.tables[e.child]
        keys = [child.c[c] for c in graph.keys[e.child]]
        probes, todo = [], []
        for subject in subjects:
            values = frozenset(subject.candidates(conn, table).values(e.parent_cols))
            if not subject.points(e, sorted(values, key=repr)):  # else read with its rows
                probes.append([Term("r", tuple(child.c[c] for c in e.child_cols), values)])
                todo.append(subject)
        if not todo:
            continue
        parts = split(conn, graph, child, keys, [[t for t in p if t.values] for p in probes])
        if parts is None:
            continue
        width = len(e.child_cols)
        for subject, probe, part in zip(todo, probes, parts, strict=True):
            rows = [(_tag(row, probe[0])[:width], tuple(row[c.name] for c in keys)) for row in part]
            subject.remember_pointing(e, Pointing(probe[0].values, rows))
