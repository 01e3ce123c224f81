"""What an export or an erasure would touch in a SQL source, per table, writing nothing.

Every row is counted once, under whose it is (`Scope`): the subject's own rows (in the
plan's total), rows shared with other people, other people's rows the subject's rows
point at (left untouched), and references inside rows that stay (detail: detached or
repointed). OWNERSHIP.md explains the model.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, and_, not_, or_

from compliance.identities import Identities
from compliance.sources.base import Disposition, LocationPlan, Scope
from compliance.sources.sql.erase import orphans
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import in_rows
from compliance.sources.sql.manifest import EdgeKind, ParentErase
from compliance.sources.sql.query import Selector
from compliance.sources.sql.read import count_rows, subject_count

KEPT_NOTE = "kept: rows of other people point at them"
OTHERS_NOTE = "other people's rows: left untouched"
SHARED_NOTE = "shared with other people: kept"


def export_plan(graph: Graph, conn: Connection, identities: Identities) -> list[LocationPlan]:
    """Per table (parents first): the subject's rows, shared rows and other people's
    rows the subject's rows point at (which an export leaves out)."""
    selector = Selector(graph, identities)
    found = []
    for table in reversed(graph.order):
        found.extend(_counted(graph, conn, table, mine(selector, table), Disposition.EXPORT))
        shared = shared_rows(selector, table)
        found.extend(_counted(graph, conn, table, shared, Disposition.EXPORT, Scope.SHARED))
        found.extend(_others(graph, conn, selector, table))
    return found


def mine(selector: Selector, table: str) -> ColumnElement[bool] | None:
    """The subject's rows of `table` for an export: own rows, and rows of a shared table
    that only the subject's rows use."""
    own, candidates = selector.own(table), selector.candidates(table)
    alone = None if candidates is None else and_(candidates, selector.unreferenced(table))
    parts = [p for p in (own, alone) if p is not None]
    return or_(*parts) if parts else None


def shared_rows(selector: Selector, table: str) -> ColumnElement[bool] | None:
    """Rows the subject's rows point at that other people's rows use too, owned by nobody."""
    candidates = selector.candidates(table)
    if candidates is None:
        return None
    shared = and_(candidates, not_(selector.unreferenced(table)))
    own = selector.own(table)
    return shared if own is None else and_(shared, not_(own))


def _others(graph: Graph, conn: Connection, selector: Selector, table: str) -> list[LocationPlan]:
    """Rows of other people (owned by somebody else) the subject's shared references reach."""
    t = graph.tables[table]
    owned = selector.owned_by_anyone(table, t)
    reached = [
        in_rows(t, e.parent_cols, graph.tables[e.child], e.child_cols, child)
        for e in graph.shared_from(table)
        if (child := selector.own(e.child)) is not None
    ]
    if owned is None or not reached:
        return []
    where = and_(owned, or_(*reached))
    own = selector.own(table)
    if own is not None:
        where = and_(where, not_(own))
    return _counted(graph, conn, table, where, Disposition.UNTOUCHED, Scope.OTHERS, OTHERS_NOTE)


def _counted(
    graph: Graph,
    conn: Connection,
    table: str,
    where: ColumnElement[bool] | None,
    disposition: Disposition,
    scope: Scope = Scope.SUBJECT,
    note: str = "",
    legal_basis: str = "",
    location: str = "",
) -> list[LocationPlan]:
    """One location with the count of `table`'s rows matching `where` (none if 0)."""
    if where is None:
        return []
    n = count_rows(conn, graph.tables[table], where)
    plan = LocationPlan(location or table, disposition, n, legal_basis, scope, note)
    return [plan] if n else []


def erase_plan(
    source: SourceHandle, conn: Connection, identities: Identities
) -> list[LocationPlan]:
    """What erasure would do, per table and per changed reference; writes nothing."""
    graph = source.graph
    selector = Selector(graph, identities, orphans(source, conn, identities))
    plain = Selector(graph, identities)  # without the orphans: what others still use
    plans: list[LocationPlan] = []
    for table in graph.order:
        rule = graph.rules[table]
        if rule.on_erase == Disposition.DELETE:
            plans.extend(_delete_plan(graph, conn, selector, table))
        else:
            count = subject_count(graph, conn, table, selector)
            if count or rule.on_erase == Disposition.RETAIN:
                basis = rule.legal_basis if rule.on_erase == Disposition.RETAIN else ""
                plans.append(LocationPlan(table, rule.on_erase, count, basis))
        shared = shared_rows(plain, table)
        plans += _counted(graph, conn, table, shared, Disposition.RETAIN, Scope.SHARED, SHARED_NOTE)
        plans.extend(_others(graph, conn, plain, table))
    return plans


def _delete_plan(
    graph: Graph, conn: Connection, selector: Selector, table: str
) -> list[LocationPlan]:
    """The subject's rows of a deleted table (shared rows only they use count as theirs):
    deleted, or kept for others; then the references to the deleted ones."""
    own = selector.own(table)
    if own is None:
        return []
    retained, tombstone = selector.kept_split(table, graph.tables[table])
    kept = [k for k in (retained, tombstone) if k is not None]
    going = own if not kept else and_(own, *[not_(k) for k in kept])
    scope = Scope.SUBJECT
    plans = _counted(graph, conn, table, going, Disposition.DELETE, scope)
    if tombstone is not None:
        where = and_(own, tombstone)
        plans += _counted(graph, conn, table, where, Disposition.ANONYMIZE, scope, KEPT_NOTE)
    if retained is not None:
        basis = "; ".join(sorted({e.legal_basis for e in graph.keep_edges(table) if e.legal_basis}))
        where = and_(own, retained)
        plans += _counted(graph, conn, table, where, Disposition.RETAIN, scope, KEPT_NOTE, basis)
    if plans and plans[0].disposition == Disposition.DELETE:
        plans += _reference_plan(graph, conn, selector, table, going)
    return plans


def _reference_plan(
    graph: Graph,
    conn: Connection,
    selector: Selector,
    table: str,
    going: ColumnElement[bool],
) -> list[LocationPlan]:
    """References from rows that stay to rows erasure deletes: detached or repointed."""
    parent = graph.tables[table]
    plans = []
    for e in graph.fix_edges(table):
        child = graph.tables[e.child]
        where = in_rows(child, e.child_cols, parent, e.parent_cols, going)
        staying = selector.staying(e.child, child)
        if staying is not None:
            where = and_(where, staying)
        way = Disposition.REPOINT if graph.way(e) == ParentErase.PLACEHOLDER else Disposition.DETACH
        at = f"{e.child}.{','.join(e.child_cols)}"
        if e.kind == EdgeKind.OWNED:  # the subject's own rows that stay
            plans += _counted(graph, conn, e.child, where, way, Scope.REFERENCE, location=at)
            continue
        own = selector.own(e.child)
        theirs = where if own is None else and_(where, not_(own))
        plans += _counted(graph, conn, e.child, theirs, way, Scope.OTHERS, location=at)
        if own is not None and not graph.deleted(e.child):
            mine_ = and_(where, own)
            plans += _counted(graph, conn, e.child, mine_, way, Scope.REFERENCE, location=at)
    return plans
