"""Reading a SQL source without writing: identities linked to the subject's, counts, the
export's row streams, and what verification finds left over.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import ColumnElement, Connection, FromClause, and_, func, not_, select

from compliance.errors import UnsupportedError, ValidationError
from compliance.identities import Identities, Identity, parse_identity
from compliance.sources.base import Disposition, Residue
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import all_anonymized, key_columns
from compliance.sources.sql.query import Selector

MAX_RESOLVE_ROUNDS = 10
MAX_IDENTITIES = 1000  # more means an identity column links different people
STREAM_ROWS = 1000


def count_rows(conn: Connection, table: FromClause, where: ColumnElement[bool]) -> int:
    """How many rows of `table` match `where`."""
    query = select(func.count()).select_from(table).where(where)
    return int(conn.execute(query).scalar_one())


def subject_count(graph: Graph, conn: Connection, table: str, selector: Selector) -> int:
    """How many of the subject's rows `table` holds, as `selector` sees them."""
    where = selector.where(table)
    if where is None:
        return 0
    return count_rows(conn, graph.tables[table], where)


def resolve(source: SourceHandle, identities: Identities) -> Identities:
    """Identities linked to the given ones through rows they match, to a fixpoint."""
    current = identities
    for _ in range(MAX_RESOLVE_ROUNDS):
        found = set(current.items)
        with source.connect() as conn:
            for table in source.graph.rules:
                found.update(_linked(source.graph, conn, table, current))
        if len(found) > MAX_IDENTITIES:
            raise UnsupportedError(
                f"source {source.name}: the subject's identities grow past "
                f"{MAX_IDENTITIES}; an identity column links different people "
                "(set resolve = false on it)"
            )
        if found == set(current.items):
            return current
        current = Identities(frozenset(found))
    raise UnsupportedError(
        f"source {source.name}: identities still growing after {MAX_RESOLVE_ROUNDS} rounds"
    )


def _linked(graph: Graph, conn: Connection, table: str, identities: Identities) -> set[Identity]:
    selector = Selector(graph, identities)
    match = selector.identity_match(table, resolving=True)
    if match is None:
        return set()
    idents = [i for i in graph.rules[table].identities if i.resolve]
    t = graph.tables[table]
    query = select(*[t.c[i.column] for i in idents]).where(match).distinct()
    found = set()
    for row in conn.execute(query.limit(MAX_IDENTITIES + 1)):
        for ident, value in zip(idents, row, strict=True):
            if value is None:
                continue
            try:
                found.add(parse_identity(ident.type, str(value)))
            except ValidationError:
                continue  # a malformed value in the data cannot be a subject's identity
    return found


def stream(
    source: SourceHandle, table: str, where: ColumnElement[bool]
) -> Iterator[Mapping[str, Any]]:
    """The rows of `table` matching `where` in key order, without excluded columns, from
    a server-side cursor."""
    graph = source.graph
    t = graph.tables[table]
    excluded = set(graph.rules[table].export_exclude)
    columns = [c for c in t.columns if c.name not in excluded]
    query = select(*columns).where(where).order_by(*key_columns(graph, table))
    with source.connect() as conn:
        result = conn.execution_options(yield_per=STREAM_ROWS).execute(query)
        for row in result.mappings():
            yield dict(row)


def residues(source: SourceHandle, identities: Identities) -> list[Residue]:
    """Rows still there for the subject: in deleted tables any row; in anonymised tables
    rows whose anonymised columns still hold a value. Retained rows are not residue."""
    graph = source.graph
    selector = Selector(graph, identities)
    found = []
    with source.connect() as conn:
        for table in graph.order:
            rule = graph.rules[table]
            if rule.on_erase == Disposition.DELETE:
                n = left_over(graph, conn, table, selector)
            elif rule.on_erase == Disposition.ANONYMIZE:
                n = _not_anonymized(graph, conn, table, selector.where(table))
            else:
                continue
            if n:
                found.append(Residue(f"{source.name}/{table}", n))
    return found


def left_over(graph: Graph, conn: Connection, table: str, selector: Selector) -> int:
    """The subject's rows of a deleted table still there: not kept for others, or kept
    as tombstones but not anonymised (retained ones are reported by the plan instead)."""
    own = selector.own(table)
    t = graph.tables[table]
    kept = selector.kept(table, t)
    if own is None or kept is None:
        return subject_count(graph, conn, table, selector)
    n = count_rows(conn, t, and_(own, not_(kept)))
    _, tombstones = selector.kept_split(table, t)
    if tombstones is not None:
        n += _not_anonymized(graph, conn, table, and_(own, tombstones))
    return n


def _not_anonymized(
    graph: Graph, conn: Connection, table: str, where: ColumnElement[bool] | None
) -> int:
    if where is None:
        return 0
    t = graph.tables[table]
    strategies = graph.rules[table].anonymize
    query = select(*[t.c[c] for c, _ in strategies]).where(where)
    n = 0
    for row in conn.execution_options(yield_per=STREAM_ROWS).execute(query):
        if not all_anonymized(strategies, row):
            n += 1
    return n
