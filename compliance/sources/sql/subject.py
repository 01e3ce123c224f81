"""The subject's rows in one SQL source, found once per request with bound key lists.

`Subject.own(conn, table)` reads a table once: its rows matching one of the subject's
identities, or pointing through an owned reference at an own row of the parent, whose
values go in as a bound list (``= ANY(:values)`` on PostgreSQL, an expanded ``IN``
elsewhere; `keys.chunk_size` values at most, several statements for more); never a
subquery that finds the subject again. What is kept of each row is its key and the
columns references use (`found.Found`), so every later statement of the request binds
the keys it needs.

Rows of a shared table (an address) are reached from the own rows pointing at them
(`reached`); whether rows that stay still use some of them is one statement per table
and reference column set for all of them (`used`): the rows of each referencing table
that point at them, less the subject's rows that erasure deletes (`going`). The erase
plan asks that as one read per reference instead, keeping the rows it finds with their
keys (`Pointing`, at most `POINTING_ROWS`): they also say which references the deletion
of those shared rows clears (`referencing`), so the plan reads each such table once;
where the subject's rows of other tables already name the shared rows, that read is the
same statement as the table's own rows (`ahead`). At a
table's turn the erasure forgets them. During an erasure the shared rows only the
subject used (`orphans`, kept in the checkpoint) are the subject's own too, once found
unused again at their table's turn: where nothing the subject still has points at them
by then, their DELETE itself keeps each one a row points at (`guarded`, one statement,
so a row written meanwhile is never detached to let it go); else they are checked
before (`verified`). `bounded` reads a table only while its rows are few (an erasure
finds the rest on the server, `direct`). OWNERSHIP.md explains the model;
`query.Selector` states the same rules as SQL expressions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, Table, and_, not_, select, union

from compliance.identities import Identities
from compliance.sources.sql.found import (
    BUFFER_ROWS,
    Found,
    empty,
    read_at_most,
    read_rows,
    read_with_pointing,
)
from compliance.sources.sql.graph import Graph
from compliance.sources.sql.keys import (
    Key,
    chunk_size,
    chunked,
    fetch_all,
    key_in,
    placeholder_key,
    sort_key,
    values_in,
)
from compliance.sources.sql.lists import (
    RowFilter,
    descendants,
    everything,
    existing,
    pack,
    staying_query,
)
from compliance.sources.sql.manifest import Edge, EdgeKind, ParentErase
from compliance.sources.sql.ownership import KEEPING
from compliance.sources.sql.query import identity_match

POINTING_ROWS = 1000  # rows pointing at shared rows an erase plan keeps for two questions


@dataclass(frozen=True)
class Pointing:
    """Rows of a reference's child pointing at some of its parent's rows, read before
    (a batch reads them for many subjects, `batch`): each row's columns of the reference
    and its key, for every row pointing at one of `values`."""

    values: frozenset[Key]
    rows: Sequence[tuple[Key, Key]]  # (the reference's columns, the child row's key)

    def covers(self, values: Sequence[Key]) -> bool:
        return self.values.issuperset(values)

    def staying(self, values: Sequence[Key], leaving: frozenset[Key]) -> set[Key]:
        """The `values` that a row not among `leaving` points at."""
        wanted = set(values)
        return {cols for cols, key in self.rows if cols in wanted and key not in leaving}


class Subject:
    """What one request found of the subject in one source; every read is memoised.

    `orphans` (erasure): keys of shared rows that only the subject's rows used when the
    erasure began; `checked` the same rows as found unused just now (no need to check
    them again). `full`: keep the rows an export shows; `extra`: more columns to keep
    per table (verification reads the anonymised ones).
    """

    def __init__(
        self,
        graph: Graph,
        identities: Identities,
        orphans: Mapping[str, Sequence[Key]] | None = None,
        *,
        checked: Mapping[str, Found] | None = None,
        full: bool = False,
        extra: Mapping[str, Sequence[str]] | None = None,
        plain: Subject | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.graph = graph
        self.identities = identities
        self.full = full
        self.extra = dict(extra or {})
        self.clock = clock
        self.orphans = {t: list(keys) for t, keys in (orphans or {}).items() if keys}
        self._checked = dict(checked or {})
        if self.orphans and plain is None:
            plain = Subject(graph, identities, full=full, extra=extra, clock=clock)
        self.plain: Subject = plain or self  # the subject without orphans: what others use
        self.verified: dict[str, frozenset[Key]] = {}  # orphans found unused at their turn
        self.guarded: dict[str, frozenset[Key]] = {}  # orphans deleted only if unused then
        self._affected = descendants(graph, set(self.orphans))
        self._own: dict[str, tuple[float, Found]] = {}  # table -> (when read, rows)
        self._more: dict[str, float] = {}  # tables found to hold too many to read, when
        self._matched: dict[str, frozenset[Key]] = {}  # own rows found not as orphans
        self._reached: dict[str, tuple[Found, frozenset[Key]]] = {}
        self._alone: dict[str, Found] = {}
        self._going: dict[str, frozenset[Key] | None] = {}
        self._pointing: dict[Edge, Pointing] = {}  # rows pointing at shared rows, read before
        self._unpointed: set[Edge] = set()  # references with too many such rows to keep

    def with_orphans(self, orphans: Mapping[str, Found]) -> Subject:
        """This subject with `orphans` (just found unused) among its own rows."""
        keys = {t: found.keys() for t, found in orphans.items() if found}
        if not keys:
            return self
        return Subject(
            self.graph,
            self.identities,
            keys,
            checked=orphans,
            full=self.full,
            extra=self.extra,
            plain=self,
            clock=self.clock,
        )

    # --- own rows -------------------------------------------------------------------

    def own(self, conn: Connection, table: str, since: float | None = None) -> Found:
        """The subject's own rows of `table`: read on first use, and again when they were
        read before `since` (a clock reading; None: as first read)."""
        owner = self._owner(table)
        read = owner._own.get(table)
        if read is None or (since is not None and read[0] < since):
            read = owner._own[table] = (self.clock(), owner.fresh(conn, table, since))
        return read[1]

    def known(self, table: str) -> bool:
        """Whether the own rows of `table` were read already."""
        return table in self._owner(table)._own

    def known_own(self, table: str) -> Found:
        """The own rows of `table` as read already (`known`)."""
        return self._owner(table)._own[table][1]

    def remember_own(self, table: str, found: Found, at: float | None = None) -> None:
        """Take `found`, read for this subject (by a batch) just now or at `at` (a clock
        reading), as its own rows."""
        self._owner(table)._own[table] = (self.clock() if at is None else at, found)

    def remember_reached(self, conn: Connection, table: str, found: Found) -> None:
        """Take `found`, read just now, as the rows of `table` the own rows point at
        through shared references (`reached`)."""
        self._reached[table] = (found, self._owned(conn, table, found))

    def remember_pointing(self, e: Edge, pointing: Pointing) -> None:
        """Take `pointing`, read just now, as the rows of `e`'s child pointing at its values."""
        self._pointing[e] = pointing

    def points(self, e: Edge, values: Sequence[Key]) -> bool:
        """Whether the rows of `e`'s child pointing at `values` were read already."""
        read = self._pointing.get(e)
        return read is not None and read.covers(values)

    def at_turn(self, conn: Connection, table: str, since: float) -> Found:
        """The own rows of `table` as erasure starts on it: read again if they were read
        before `since` (a clock reading), and the orphans among them found unused now;
        or, where their deletion can say it (`guards_orphans`), the orphans that are
        still there, each deleted only if nothing points at it then (`guarded`)."""
        owner = self._owner(table)
        self.forget_pointing(table)
        check = not self.guards_orphans(table)
        read = owner._own.get(table)
        if read is None or read[0] < since:
            owner._checked.pop(table, None)  # found unused earlier: look again
            found = owner.fresh(conn, table, since, check=check)  # orphans as they are read
        elif check:
            found = owner.recheck(conn, table, read[1])
        else:
            found = read[1]
        owner._own[table] = (self.clock(), found)
        orphans = set(self.orphans.get(table, ())) - owner._matched.get(table, frozenset())
        mine = found.key_set & orphans
        (self.verified if check else self.guarded)[table] = mine
        return found

    def guards_orphans(self, table: str) -> bool:
        """Whether the orphans of `table` can be deleted by one statement that keeps
        each one something points at (`Graph.guards`): the subject's rows that point at them
        and go are gone by its turn (their tables come earlier in the order), so every
        row still pointing at one stays, as `unused` would count it. Only where the
        table's rows are deleted (an anonymised orphan is checked before it is changed)."""
        if table not in self.orphans or not self.graph.deleted(table):
            return False
        order = self.graph.order
        at = order.index(table)
        return all(
            e.child not in order or not self.graph.deleted(e.child) or order.index(e.child) < at
            for e in self.graph.guards(table)
        )

    def _owner(self, table: str) -> Subject:
        """Who holds `table`'s rows: the plain subject unless orphans change them."""
        return self if self.plain is self or table in self._affected else self.plain

    def fresh(
        self, conn: Connection, table: str, since: float | None = None, *, check: bool = True
    ) -> Found:
        """`own`, read again now (the parents' rows as found before, or again when they
        were found before `since`); `check`: only the orphans still unused, else every
        orphan still there."""
        if table not in self.graph.reachable:
            return empty(self.graph, table)
        conditions = self.match(conn, table, since)
        found = self._read_own(conn, table, conditions) if conditions else empty(self.graph, table)
        if table in self.orphans:
            self._matched[table] = found.key_set  # theirs whoever else uses them
            found = found.union(self._orphans_unused(conn, table, check=check))
            spare = placeholder_key(self.graph, table)
            found = found if spare is None else found.without([spare])  # nobody's row
        return found

    def match(
        self, conn: Connection, table: str, since: float | None = None
    ) -> list[ColumnElement[bool]]:
        """Conditions (one per statement) whose rows together are the subject's own rows
        of `table` but for orphans: identities matched, owned parents' values bound."""
        parents = [(e, self.own(conn, e.parent, since)) for e in self.graph.owned_parents(table)]
        return self.conditions(table, parents)

    def conditions(
        self, table: str, parents: Sequence[tuple[Edge, Found]]
    ) -> list[ColumnElement[bool]]:
        """`match` from the parents' own rows (`parents`: each owned reference of `table`
        with the rows of its parent)."""
        t = self.graph.tables[table]
        lists = []
        for e, rows in parents:
            values = rows.values(e.parent_cols)
            if values:
                lists.append(([t.c[c] for c in e.child_cols], values))
        conditions = pack(identity_match(self.graph, table, self.identities), lists, self.graph)
        spare = placeholder_key(self.graph, table)
        if spare is None:
            return conditions
        return [and_(c, not_(key_in(self.graph, table, [spare]))) for c in conditions]

    def bounded(
        self, conn: Connection, table: str, limit: int, since: float | None = None
    ) -> Found | None:
        """`own`, unless that would read more than `limit` rows: None when the table
        holds more of the subject's rows, or when only a parent's rows that are more
        lead to them (an erasure then finds them on the server, `direct`). What it
        reads is kept as `own` keeps it; rows read whole before are returned as they are."""
        owner = self._owner(table)
        if owner is not self.plain or table not in self.graph.reachable:
            return self.own(conn, table, since)  # orphans among them: the usual way
        read = owner._own.get(table)
        if read is not None and (since is None or read[0] >= since):
            return read[1]
        more = owner._more.get(table)
        if more is not None and (since is None or more >= since):
            return None
        parents = []
        for e in self.graph.owned_parents(table):
            rows = self.bounded(conn, e.parent, limit, since)
            if rows is None:
                return None
            parents.append((e, rows))
        conditions = self.conditions(table, parents)
        extra = self.extra.get(table, ())
        found = read_at_most(conn, self.graph, table, conditions, limit, extra)
        if found is None:
            owner._more[table] = self.clock()
            return None
        owner._own[table] = (self.clock(), found)
        return found

    def changes(self, table: str) -> bool:
        """Whether orphans (and the rows they own) are among the own rows of `table`."""
        return self._owner(table) is not self.plain

    def recheck(self, conn: Connection, table: str, found: Found) -> Found:
        """`found` less its orphans that rows which stay use by now."""
        orphans = set(self.orphans.get(table, ())) & found.key_set
        orphans -= self._matched.get(table, frozenset())
        if not orphans:
            return found
        rows = found.only(orphans)
        return found.without(rows.key_set - self.plain.unused(conn, table, rows))

    def _orphans_unused(self, conn: Connection, table: str, *, check: bool = True) -> Found:
        """The orphans of `table` that exist and nothing that stays uses (`check`), or
        that exist."""
        if table in self._checked:
            return self._checked.pop(table)  # found unused a moment ago
        keys = self.orphans[table]
        size = chunk_size(self.graph.dialect, len(self.graph.keys[table]))
        conditions = [key_in(self.graph, table, part) for part in chunked(keys, size)]
        rows = self._read(conn, table, conditions)
        return rows.only(self.plain.unused(conn, table, rows)) if check else rows

    def _read_own(
        self, conn: Connection, table: str, conditions: Sequence[ColumnElement[bool]]
    ) -> Found:
        """`_read`; where the subject's rows of other tables, read already, say which
        shared rows it reaches, the same statement also reads the rows of `table`
        pointing at those (`ahead`), kept for `used` and `referencing` (`Pointing`)."""
        ahead = self.ahead(table) if len(conditions) == 1 and not self.full else []
        if ahead:
            limit = BUFFER_ROWS + POINTING_ROWS * len(ahead)
            extra = self.extra.get(table, ())
            read = read_with_pointing(
                conn, self.graph, table, conditions[0], ahead, limit, extra=extra
            )
            if read is not None:
                found, pointed = read
                for (e, values), rows in zip(ahead, pointed, strict=True):
                    if len(rows) <= POINTING_ROWS:
                        self._pointing[e] = Pointing(values, rows)
                return found
        return self._read(conn, table, conditions)

    def ahead(self, table: str) -> list[tuple[Edge, frozenset[Key]]]:
        """The shared references out of `table`, each with the values the subject's rows
        of other tables, read already, point at through references to the same columns:
        shared rows it reaches whatever its rows of `table` hold."""
        graph = self.graph
        found = []
        for e in graph.edges:
            if e.child != table or e.kind != EdgeKind.SHARED or e in self._pointing:
                continue
            values: set[Key] = set()
            for other in graph.shared_from(e.parent):
                same = other.child != table and other.parent_cols == e.parent_cols
                if same and self.known(other.child):
                    values.update(self.known_own(other.child).values(other.child_cols))
            if values and len(values) <= chunk_size(graph.dialect, len(e.child_cols)):
                found.append((e, frozenset(values)))
        return found

    def _read(
        self, conn: Connection, table: str, conditions: Sequence[ColumnElement[bool]]
    ) -> Found:
        extra = self.extra.get(table, ())
        return read_rows(conn, self.graph, table, conditions, full=self.full, extra=extra)

    # --- shared rows ----------------------------------------------------------------

    def reached(self, conn: Connection, table: str) -> tuple[Found, frozenset[Key]]:
        """Rows of `table` the subject's own rows point at through shared references,
        and the keys of those among them with a live owner (another subject's rows,
        or the subject's own: never shared)."""
        if table not in self._reached:
            self._reached[table] = self._reach(conn, table)
        return self._reached[table]

    def candidates(self, conn: Connection, table: str) -> Found:
        """Rows the subject's own rows point at through shared references, owned by nobody."""
        found, owned = self.reached(conn, table)
        return found.without(owned)

    def alone(self, conn: Connection, table: str, *, remember: bool = False) -> Found:
        """Candidates only the subject's rows use: theirs in an export, orphans in an
        erasure (`remember`: keep the rows pointing at them for the erase plan, `unused`)."""
        if table not in self._alone:
            candidates = self.candidates(conn, table)
            unused = self.plain.unused(conn, table, candidates, remember=remember)
            self._alone[table] = candidates.only(unused)
        return self._alone[table]

    def mine(self, conn: Connection, table: str) -> Found:
        """The subject's rows of `table` for an export: own rows, and the shared rows only
        the subject's rows use."""
        return self.own(conn, table).union(self.alone(conn, table))

    def shared(self, conn: Connection, table: str) -> Found:
        """Rows the subject's rows point at that other people's rows use too, owned by nobody."""
        candidates = self.candidates(conn, table)
        alone = self.alone(conn, table).key_set
        return candidates.without(alone | self.own(conn, table).key_set)

    def others(self, conn: Connection, table: str) -> Found:
        """Rows of other people (with a live owner) the subject's shared references reach."""
        found, owned = self.reached(conn, table)
        return found.only(owned).without(self.own(conn, table).key_set)

    def _reach(self, conn: Connection, table: str) -> tuple[Found, frozenset[Key]]:
        t = self.graph.tables[table]
        lists = []
        for e in self.graph.shared_from(table):
            values = self.own(conn, e.child).values(e.child_cols)
            if values:
                lists.append(([t.c[c] for c in e.parent_cols], values))
        if not lists:
            return empty(self.graph, table), frozenset()
        found = self._read(conn, table, pack(None, lists, self.graph))
        return found, self._owned(conn, table, found)

    def _owned(self, conn: Connection, table: str, found: Found) -> frozenset[Key]:
        """Keys of `found` pointing through an owned reference at a row that exists."""
        owned: set[Key] = set()
        for e in self.graph.owners(table):
            values = found.values(e.child_cols)
            if not values:
                continue
            known = set(self.own(conn, e.parent).values(e.parent_cols))
            alive = known & set(values)
            rest = [v for v in values if v not in known]
            if rest:
                alive |= existing(conn, self.graph, e, rest)
            owned |= found.where(e.child_cols, alive).key_set
        return frozenset(owned)

    # --- rows that stay -------------------------------------------------------------

    def going(
        self, conn: Connection, table: str, visiting: frozenset[str] = frozenset()
    ) -> frozenset[Key] | None:
        """Keys of the own rows of `table` erasure deletes (not kept for rows that stay);
        None: erasure deletes no row of the table (all of them stay)."""
        if table not in self.graph.tables or not self.graph.deleted(table):
            return None
        if not visiting and table in self._going:
            return self._going[table]
        own = self.own(conn, table)
        going = own.key_set - self.kept(conn, table, own, KEEPING, visiting)
        if not visiting:
            self._going[table] = going
        return going

    def kept(
        self,
        conn: Connection,
        table: str,
        rows: Found,
        ways: tuple[ParentErase, ...] = KEEPING,
        visiting: frozenset[str] = frozenset(),
    ) -> frozenset[Key]:
        """Keys of `rows` that a row that stays points at through a reference whose way
        is one of `ways` (kept as an anonymised tombstone, or retained)."""
        edges = [e for e in self.graph.keep_edges(table) if self.graph.way(e) in ways]
        if not edges or table in visiting or not rows:
            return frozenset()
        return self.used(conn, table, rows, edges, visiting | {table})

    def kept_split(self, conn: Connection, table: str, rows: Found) -> tuple[Found, Found]:
        """`rows` kept for rows that stay: (retained as they are, kept as anonymised
        tombstones); a row kept both ways is retained."""
        retained = rows.only(self.kept(conn, table, rows, (ParentErase.RETAIN,)))
        tombstones = rows.only(self.kept(conn, table, rows, (ParentErase.ANONYMIZE,)))
        return retained, tombstones.without(retained.key_set)

    def unused(
        self, conn: Connection, table: str, rows: Found, *, remember: bool = False
    ) -> frozenset[Key]:
        """Keys of `rows` that nothing points at once the subject's deleted rows are gone
        (owned children that go with a row do not count). `remember`: keep the rows
        pointing at them, with their keys (`Pointing`), for `referencing` to take."""
        guards = self.graph.guards(table)
        return rows.key_set - self.used(conn, table, rows, guards, remember=remember)

    def used(
        self,
        conn: Connection,
        table: str,
        rows: Found,
        edges: Sequence[Edge],
        visiting: frozenset[str] = frozenset(),
        *,
        remember: bool = False,
    ) -> frozenset[Key]:
        """Keys of `rows` (of `table`) that a row that stays points at through one of
        `edges`: one statement per set of referenced columns (and chunk of values), or
        with `remember` one per reference (`_pointing_at`)."""
        if not rows or not edges:
            return frozenset()
        groups: dict[tuple[str, ...], list[Edge]] = {}
        for e in edges:
            groups.setdefault(e.parent_cols, []).append(e)
        used: set[Key] = set()
        for cols, group in groups.items():
            hits = self._referenced(conn, group, rows.values(cols), visiting, remember)
            used |= rows.where(cols, hits).key_set
        return frozenset(used)

    def referencing(
        self,
        conn: Connection,
        e: Edge,
        values: Sequence[Key],
        visiting: frozenset[str] = frozenset(),
    ) -> list[Key]:
        """Keys of the rows of `e`'s child that point at `values` through `e` and stay."""
        read = self.plain._pointing.get(e) or self._pointing.get(e)
        if read is not None and read.covers(values):
            leaving = self._leaving(conn, e, values, visiting)
            wanted = set(values)
            return [key for cols, key in read.rows if cols in wanted and key not in leaving]
        found: list[Key] = []
        for part in chunked(values, chunk_size(self.graph.dialect, len(e.parent_cols))):
            child = self.graph.tables[e.child]
            keys = [child.c[c] for c in self.graph.keys[e.child]]
            query, filtered = self._staying(conn, e, part, visiting, keys)
            rows = map(tuple, fetch_all(conn, query))
            found += [row[: len(keys)] for row in rows if filtered(row)]
        return found

    def _referenced(
        self,
        conn: Connection,
        edges: list[Edge],
        values: Sequence[Key],
        visiting: frozenset[str],
        remember: bool = False,
    ) -> set[Key]:
        """The `values` that rows which stay point at through `edges` (all to the same
        columns), as one UNION per chunk of values; with `remember`, one read per
        reference kept for `referencing` where the rows are few (`_pointing_at`)."""
        hits: set[Key] = set()
        rest = []
        for e in edges:
            read = self._pointing.get(e)
            if remember and not self.points(e, values):
                read = self._pointing_at(conn, e, values)
            if read is not None and read.covers(values):
                hits |= read.staying(values, self._leaving(conn, e, values, visiting))
            else:
                rest.append(e)
        if not rest:
            return hits
        edges = rest
        width = len(edges[0].parent_cols)
        for part in chunked(values, chunk_size(self.graph.dialect, width * len(edges))):
            queries = []
            for e in edges:
                child = self._table(e.child)
                cols = [child.c[c] for c in e.child_cols]
                query, filtered = self._staying(conn, e, part, visiting, cols)
                if filtered is everything:
                    queries.append(query)
                else:  # too many of the subject's rows to leave out in SQL: here instead
                    rows = map(tuple, fetch_all(conn, query))
                    hits |= {row[:width] for row in rows if filtered(row)}
            if queries:
                statement = queries[0] if len(queries) == 1 else union(*queries)
                hits |= {tuple(row) for row in fetch_all(conn, statement)}  # type: ignore[arg-type]
        return hits

    def _pointing_at(self, conn: Connection, e: Edge, values: Sequence[Key]) -> Pointing | None:
        """Every row of `e`'s child pointing at `values` (the subject's too), with its
        key, in one statement, kept: it tells both whether the `values` are used and
        which rows to detach from them (`referencing`). None when `values` need more
        than one statement, the child is not registered, or it holds more than
        `POINTING_ROWS` such rows (then each question reads what it needs)."""
        graph = self.graph
        if e.child not in graph.tables or e in self._unpointed:
            return None
        if len(values) > chunk_size(graph.dialect, len(e.child_cols)):
            return None
        child = graph.tables[e.child]
        cols = [child.c[c] for c in e.child_cols]
        keys = [child.c[c] for c in graph.keys[e.child]]
        query = select(*cols, *keys).where(values_in(cols, values, graph.dialect))
        rows = fetch_all(conn, query.limit(POINTING_ROWS + 1))
        if len(rows) > POINTING_ROWS:
            self._unpointed.add(e)
            return None
        width = len(cols)
        read = Pointing(frozenset(values), [(tuple(r[:width]), tuple(r[width:])) for r in rows])
        self._pointing[e] = read
        return read

    def forget_pointing(self, table: str) -> None:
        """Drop what was read of the rows pointing at `table`'s rows: erasure checks
        them again at the table's turn (someone may point at them by now)."""
        for subject in (self, self.plain):
            for e in [e for e in subject._pointing if e.parent == table]:
                del subject._pointing[e]

    def _staying(
        self,
        conn: Connection,
        e: Edge,
        values: Sequence[Key],
        visiting: frozenset[str],
        columns: list[Any],
    ) -> tuple[Select[Any], RowFilter]:
        """A query of `columns` of `e`'s child rows pointing at `values` that stay (not
        among the subject's rows erasure deletes), and a filter for what it returns."""
        leaving = sorted(self._leaving(conn, e, values, visiting), key=sort_key)
        return staying_query(self.graph, self._table(e.child), e, values, columns, leaving)

    def _leaving(
        self, conn: Connection, e: Edge, values: Sequence[Key], visiting: frozenset[str]
    ) -> frozenset[Key]:
        """Keys of the subject's rows of `e`'s child that point at `values` and that
        erasure deletes (they do not count as rows that stay)."""
        going = self.going(conn, e.child, visiting)
        if not going:
            return frozenset()
        return going & self.own(conn, e.child).where(e.child_cols, values).key_set

    def _table(self, name: str) -> Table:
        if name in self.graph.tables:
            return self.graph.tables[name]
        return self.graph.schema_tables[name]
