"""What a SQL erasure would do, and the shared rows it must remember before it starts.

`erase_plan` counts per table (and per reference erasure sets to NULL) without writing.
`orphans` finds the shared rows (addresses...) the subject's rows point at and nothing
else uses: once the subject's rows are deleted nothing would lead to them any more, so
the first erase call records their keys in the checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, and_, select

from compliance.identities import Identities
from compliance.sources.base import Disposition, LocationPlan
from compliance.sources.sqlkeys import Key, in_rows, key_columns
from compliance.sources.sqlquery import Selector
from compliance.sources.sqlread import count_rows, subject_count

if TYPE_CHECKING:
    from compliance.sources.sql import SqlSource


def orphans(source: SqlSource, conn: Connection, identities: Identities) -> dict[str, list[Key]]:
    """Keys of shared rows the subject's rows point at and nothing else uses."""
    graph = source.graph
    selector = Selector(graph, identities)
    found: dict[str, list[Key]] = {}
    for table in graph.order:
        candidates = selector.candidates(table)
        if candidates is None:
            continue
        query = (
            select(*key_columns(graph, table))
            .where(candidates, selector.unreferenced(table))
            .order_by(*key_columns(graph, table))
        )
        keys = [tuple(row) for row in conn.execute(query)]
        if keys:
            found[table] = keys
    return found


def erase_plan(source: SqlSource, conn: Connection, identities: Identities) -> list[LocationPlan]:
    """What erasure would do, per table (and per detached reference); writes nothing."""
    graph = source.graph
    selector = Selector(graph, identities, orphans(source, conn, identities))
    plans = []
    for table in graph.order:
        rule = graph.rules[table]
        count = subject_count(graph, conn, table, selector)
        if count or rule.on_erase == Disposition.RETAIN:
            basis = rule.legal_basis if rule.on_erase == Disposition.RETAIN else ""
            plans.append(LocationPlan(table, rule.on_erase, count, basis))
        if rule.on_erase == Disposition.DELETE and count:
            plans.extend(_detach_plan(source, conn, table, selector))
    return plans


def _detach_plan(
    source: SqlSource, conn: Connection, table: str, selector: Selector
) -> list[LocationPlan]:
    """Rows that stay but point at rows erasure deletes (their reference is set to NULL)."""
    graph = source.graph
    parent = graph.tables[table]
    plans = []
    for e in graph.detach_edges(table):
        child = graph.tables[e.child]
        where = in_rows(child, e.child_cols, parent, e.parent_cols, selector.rows(table))
        staying = selector.staying(e.child, child)
        if staying is not None:
            where = and_(where, staying)
        count = count_rows(conn, child, where)
        if count:
            location = f"{e.child}.{','.join(e.child_cols)}"
            plans.append(LocationPlan(location, Disposition.ANONYMIZE, count))
    return plans
