"""One anonymise batch of a SQL erasure: rewrite the anonymised columns of the given rows.

Values already anonymised are left as they are (an earlier, interrupted run may have done
some), so repeating a batch changes nothing. The batch is one transaction: read the rows'
current values, then one ``UPDATE`` executed for every row that still needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, and_, bindparam, select, update

from compliance.sources.sqlkeys import key_columns, key_in
from compliance.sources.sqlvalues import all_anonymized, anonymized_value, is_anonymized

if TYPE_CHECKING:
    from compliance.sources.sql import SqlSource


def anonymize_batch(source: SqlSource, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """Anonymise the rows of `table` whose keys lead `rows`; returns how many changed."""
    graph = source.graph
    t = graph.tables[table]
    names = graph.keys[table]
    keys = [row[: len(names)] for row in rows]
    cols = [c for c, _ in graph.rules[table].anonymize]
    with source.connect() as conn:
        current = conn.execute(
            select(*key_columns(graph, table), *[t.c[c] for c in cols]).where(
                key_in(graph, table, keys)
            )
        ).all()
        params = [p for p in (_params(source, table, row) for row in current) if p is not None]
        if params:
            stmt = (
                update(t)
                .where(and_(*[t.c[n] == bindparam(f"k_{n}") for n in names]))
                .values({c: bindparam(f"v_{c}") for c in cols})
            )
            conn.execute(stmt, params)
    return len(params)


def _params(source: SqlSource, table: str, row: Row[Any]) -> dict[str, Any] | None:
    """The UPDATE's parameters for one row (key, then anonymised columns); None: the row
    is anonymised already."""
    names = source.graph.keys[table]
    strategies = source.graph.rules[table].anonymize
    values = row[len(names) :]
    if all_anonymized(strategies, values):
        return None
    param = {f"k_{n}": row[i] for i, n in enumerate(names)}
    for (column, strategy), value in zip(strategies, values, strict=True):
        if not is_anonymized(strategy, value):  # an earlier run did it already
            where = f"{source.name}/{table}.{column}"
            value = anonymized_value(strategy, source.pseudonym_key, where, value)
        param[f"v_{column}"] = value
    return param
