"""Reading a SQL source without writing: identities linked to the subject's, the export's
row streams, and what verification finds left over.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, FromClause, func, select

from compliance.errors import UnsupportedError, ValidationError
from compliance.identities import Identities, Identity, parse_identity
from compliance.sources.base import Disposition, Residue
from compliance.sources.sql.found import Found, exported_columns
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.keys import (
    Key,
    all_anonymized,
    chunk_size,
    chunked,
    key_columns,
    key_in,
)
from compliance.sources.sql.query import identity_match
from compliance.sources.sql.subject import Subject

MAX_RESOLVE_ROUNDS = 10
MAX_IDENTITIES = 1000  # more means an identity column links different people
STREAM_ROWS = 1000


def count_rows(conn: Connection, table: FromClause, where: ColumnElement[bool]) -> int:
    """How many rows of `table` match `where`."""
    query = select(func.count()).select_from(table).where(where)
    return int(conn.execute(query).scalar_one())


def resolve(source: SourceHandle, identities: Identities) -> Identities:
    """Identities linked to the given ones through rows they match, to a fixpoint. Each
    round looks up only the identities the round before found (the others' rows were
    read already), all rounds on one connection."""
    current, new = identities, identities
    with source.connect() as conn:
        for _ in range(MAX_RESOLVE_ROUNDS):
            found = set(current.items)
            for table in source.graph.rules:
                found.update(_linked(source.graph, conn, table, new))
            if len(found) > MAX_IDENTITIES:
                raise UnsupportedError(
                    f"source {source.name}: the subject's identities grow past "
                    f"{MAX_IDENTITIES}; an identity column links different people "
                    "(set resolve = false on it)"
                )
            added = found - set(current.items)
            if not added:
                return current
            current, new = Identities(frozenset(found)), Identities(frozenset(added))
    raise UnsupportedError(
        f"source {source.name}: identities still growing after {MAX_RESOLVE_ROUNDS} rounds"
    )


def _linked(graph: Graph, conn: Connection, table: str, identities: Identities) -> set[Identity]:
    match = identity_match(graph, table, identities, resolving=True)
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


def rows_of(source: SourceHandle, table: str, found: Found) -> Iterator[Mapping[str, Any]]:
    """The exported rows of `found`: as read when they were few, else read again by key
    (key lists in chunks, each from a server-side cursor), without excluded columns."""
    if found.full is not None:
        yield from (dict(row) for row in found.full)
        return
    graph = source.graph
    columns = exported_columns(graph, table)
    size = chunk_size(graph.dialect, len(graph.keys[table]))
    with source.connect() as conn:
        for part in chunked(found.keys(), size):
            query = (
                select(*columns)
                .where(key_in(graph, table, part))
                .order_by(*key_columns(graph, table))
            )
            result = conn.execution_options(yield_per=STREAM_ROWS).execute(query)
            for row in result.mappings():
                yield dict(row)


def residues(source: SourceHandle, identities: Identities) -> list[Residue]:
    """Rows still there for the subject: in deleted tables any row; in anonymised tables
    rows whose anonymised columns still hold a value. Retained rows are not residue."""
    graph = source.graph
    extra = {t: [c for c, _ in rule.anonymize] for t, rule in graph.rules.items()}
    subject = Subject(graph, identities, extra=extra)
    found = []
    with source.connect() as conn:
        for table in reversed(graph.order):  # parents first: each read once
            rule = graph.rules[table]
            if rule.on_erase == Disposition.DELETE:
                n = left_over(conn, subject, table, subject.own(conn, table))
            elif rule.on_erase == Disposition.ANONYMIZE:
                n = not_anonymized(graph, table, subject.own(conn, table))
            else:
                continue
            if n:
                found.append(Residue(f"{source.name}/{table}", n))
    return sorted(found, key=lambda r: graph.order.index(r.location.split("/", 1)[1]))


def left_over(conn: Connection, subject: Subject, table: str, own: Found) -> int:
    """The subject's rows `own` of a deleted table still there: not kept for others, or
    kept as tombstones but not anonymised (retained ones are reported by the plan)."""
    retained, tombstones = subject.kept_split(conn, table, own)
    n = len(own) - len(retained) - len(tombstones)
    if tombstones:
        n += _tombstones_left(conn, subject.graph, table, tombstones.keys())
    return n


def not_anonymized(graph: Graph, table: str, rows: Found) -> int:
    """How many of `rows` (read with the anonymised columns) still hold a value there."""
    if not rows:
        return 0
    strategies = graph.rules[table].anonymize
    at = rows.picker([c for c, _ in strategies])
    return sum(1 for row in rows.rows if not all_anonymized(strategies, [row[i] for i in at]))


def _tombstones_left(conn: Connection, graph: Graph, table: str, keys: Sequence[Key]) -> int:
    t = graph.tables[table]
    strategies = graph.rules[table].anonymize
    n = 0
    for part in chunked(keys, chunk_size(graph.dialect, len(graph.keys[table]))):
        query = select(*[t.c[c] for c, _ in strategies]).where(key_in(graph, table, part))
        n += sum(1 for row in conn.execute(query) if not all_anonymized(strategies, row))
    return n
