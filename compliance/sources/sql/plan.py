"""What an export or an erasure would touch in a SQL source, per table, writing nothing.

Every row is counted once, under whose it is (`Scope`): the subject's own rows (in the
plan's total), rows shared with other people, other people's rows the subject's rows
point at (left untouched), and references inside rows that stay (detail: detached or
repointed). The counts are those of the rows `subject.Subject` found, read once per
table; only the references from rows that stay take a statement of their own.
OWNERSHIP.md explains the model.
"""

from __future__ import annotations

from sqlalchemy import Connection

from compliance.sources.base import Disposition, LocationPlan, Scope
from compliance.sources.sql.found import Found
from compliance.sources.sql.manifest import EdgeKind, ParentErase
from compliance.sources.sql.subject import Subject

KEPT_NOTE = "kept: rows of other people point at them"
OTHERS_NOTE = "other people's rows: left untouched"
SHARED_NOTE = "shared with other people: kept"


def export_plan(conn: Connection, subject: Subject) -> list[LocationPlan]:
    """Per table (parents first): the subject's rows, shared rows and other people's
    rows the subject's rows point at (which an export leaves out)."""
    found = []
    for table in reversed(subject.graph.order):
        found += _counted(table, len(subject.mine(conn, table)), Disposition.EXPORT)
        shared = len(subject.shared(conn, table))
        found += _counted(table, shared, Disposition.EXPORT, Scope.SHARED)
        others = len(subject.others(conn, table))
        found += _counted(table, others, Disposition.UNTOUCHED, Scope.OTHERS, OTHERS_NOTE)
    return found


def orphans(conn: Connection, subject: Subject) -> dict[str, Found]:
    """Shared rows the subject's rows point at and nothing else uses, per table; the
    rows pointing at them are kept for `erase_plan`'s references (`Subject.referencing`)."""
    found = {t: subject.alone(conn, t, remember=True) for t in subject.graph.order}
    return {t: rows for t, rows in found.items() if rows}


def erase_plan(conn: Connection, subject: Subject) -> list[LocationPlan]:
    """What erasure would do, per table and per changed reference; writes nothing.
    `subject` holds the orphans (see `orphans`); its `plain` part what others still use."""
    graph, plain = subject.graph, subject.plain
    plans: list[LocationPlan] = []
    for table in graph.order:
        rule = graph.rules[table]
        if rule.on_erase == Disposition.DELETE:
            plans.extend(_delete_plan(conn, subject, table))
        else:
            count = len(subject.own(conn, table))
            if count or rule.on_erase == Disposition.RETAIN:
                basis = rule.legal_basis if rule.on_erase == Disposition.RETAIN else ""
                plans.append(LocationPlan(table, rule.on_erase, count, basis))
        shared = len(plain.shared(conn, table))
        plans += _counted(table, shared, Disposition.RETAIN, Scope.SHARED, SHARED_NOTE)
        others = len(plain.others(conn, table))
        plans += _counted(table, others, Disposition.UNTOUCHED, Scope.OTHERS, OTHERS_NOTE)
    return plans


def _counted(
    table: str,
    n: int,
    disposition: Disposition,
    scope: Scope = Scope.SUBJECT,
    note: str = "",
    legal_basis: str = "",
    location: str = "",
) -> list[LocationPlan]:
    """One location of `n` rows of `table` (none if 0)."""
    plan = LocationPlan(location or table, disposition, n, legal_basis, scope, note)
    return [plan] if n else []


def _delete_plan(conn: Connection, subject: Subject, table: str) -> list[LocationPlan]:
    """The subject's rows of a deleted table (shared rows only they use count as theirs):
    deleted, or kept for others; then the references to the deleted ones."""
    graph = subject.graph
    own = subject.own(conn, table)
    if not own:
        return []
    retained, tombstones = subject.kept_split(conn, table, own)
    going = own.without(retained.key_set | tombstones.key_set)
    plans = _counted(table, len(going), Disposition.DELETE)
    plans += _counted(table, len(tombstones), Disposition.ANONYMIZE, note=KEPT_NOTE)
    basis = "; ".join(sorted({e.legal_basis for e in graph.keep_edges(table) if e.legal_basis}))
    plans += _counted(table, len(retained), Disposition.RETAIN, note=KEPT_NOTE, legal_basis=basis)
    if going:
        plans += _reference_plan(conn, subject, table, going)
    return plans


def _reference_plan(
    conn: Connection, subject: Subject, table: str, going: Found
) -> list[LocationPlan]:
    """References from rows that stay to rows erasure deletes: detached or repointed."""
    graph = subject.graph
    plans = []
    for e in graph.fix_edges(table):
        values = going.values(e.parent_cols)
        if not values:
            continue
        pointing = subject.referencing(conn, e, values)
        way = Disposition.REPOINT if graph.way(e) == ParentErase.PLACEHOLDER else Disposition.DETACH
        at = f"{e.child}.{','.join(e.child_cols)}"
        if e.kind == EdgeKind.OWNED:  # the subject's own rows that stay
            plans += _counted(e.child, len(pointing), way, Scope.REFERENCE, location=at)
            continue
        own = subject.own(conn, e.child).key_set
        theirs = [k for k in pointing if k not in own]
        plans += _counted(e.child, len(theirs), way, Scope.OTHERS, location=at)
        if not graph.deleted(e.child):
            mine = len(pointing) - len(theirs)
            plans += _counted(e.child, mine, way, Scope.REFERENCE, location=at)
    return plans
