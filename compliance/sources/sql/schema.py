"""The SQL manifest checked against the reflected schema: every table, column and key it
names exists and fits its use, and references (reflected foreign keys and declared ones)
become the graph's edges. A mistake is a `ManifestError` naming its manifest entry.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Column, MetaData, String, Table

from compliance.errors import ManifestError
from compliance.sources.base import Disposition
from compliance.sources.sql.manifest import (
    HMAC_LENGTH,
    REDACTED,
    Edge,
    EdgeKind,
    Reference,
    Strategy,
    TableRule,
    qualified,
)


def table_of(metadata: MetaData, schema: str | None, rule: TableRule) -> Table:
    full = qualified(schema, rule.name)
    if full not in metadata.tables:
        where = f" in schema {schema!r}" if schema else ""
        raise ManifestError(f"{rule.entry}: no table {rule.name!r}{where} in the database")
    return metadata.tables[full]


def _column(table: Table, name: str, entry: str) -> Column[object]:
    if name not in table.c:
        raise ManifestError(f"{entry}: table {table.name!r} has no column {name!r}")
    return table.c[name]


def check_rule(rule: TableRule, table: Table) -> None:
    for ident in rule.identities:
        _column(table, ident.column, f"{rule.entry}.identities")
    for name in rule.export_exclude:
        _column(table, name, f"{rule.entry}.export_exclude")
    if rule.on_erase == Disposition.RETAIN and not rule.legal_basis:
        raise ManifestError(f"{rule.entry}: on_erase = 'retain' needs a legal_basis")
    if rule.on_erase == Disposition.ANONYMIZE and not rule.anonymize:
        raise ManifestError(f"{rule.entry}: on_erase = 'anonymize' needs an anonymize table")
    if rule.anonymize and rule.on_erase != Disposition.ANONYMIZE:
        raise ManifestError(f"{rule.entry}: 'anonymize' is set but on_erase is not 'anonymize'")
    for name, strategy in rule.anonymize:
        _check_strategy(table, name, strategy, f"{rule.entry}.anonymize.{name}")


def _check_strategy(table: Table, name: str, strategy: Strategy, entry: str) -> None:
    column = _column(table, name, entry)
    if column.primary_key:
        raise ManifestError(f"{entry}: a primary key column cannot be anonymised")
    if strategy == Strategy.NULL and not column.nullable:
        raise ManifestError(f"{entry}: column is NOT NULL; use 'redact' or 'hmac' instead")
    if strategy in (Strategy.REDACT, Strategy.HMAC):
        if not isinstance(column.type, String):
            raise ManifestError(f"{entry}: '{strategy}' needs a text column; use 'null'")
        need = HMAC_LENGTH if strategy == Strategy.HMAC else len(REDACTED)
        length = column.type.length
        if length is not None and length < need:
            raise ManifestError(f"{entry}: '{strategy}' needs room for {need} characters")


def row_key(rule: TableRule, table: Table) -> tuple[str, ...]:
    if rule.key:
        for name in rule.key:
            _column(table, name, f"{rule.entry}.key")
        return rule.key
    key = tuple(c.name for c in table.primary_key.columns)
    if not key:
        raise ManifestError(
            f'{rule.entry}: table has no primary key; declare key = ["col", ...] (unique)'
        )
    return key


def read_edges(
    rules: Mapping[str, TableRule],
    tables: Mapping[str, Table],
    metadata: MetaData,
    schema: str | None,
) -> list[Edge]:
    found: dict[tuple[str, tuple[str, ...], str], Edge] = {}
    for name, table in tables.items():
        for fk in table.foreign_key_constraints:
            parent = fk.referred_table.name
            if parent not in tables:
                continue  # a registered table pointing outside: never followed
            cols = tuple(c.name for c in fk.columns)
            kind = EdgeKind.LINK if parent == name else EdgeKind.OWNED
            found[(name, cols, parent)] = _edge(
                table, cols, parent, tuple(e.column.name for e in fk.elements), kind
            )
    for name, rule in rules.items():
        for ref in rule.references:
            edge = _declared_edge(tables[name], ref, tables, metadata, schema)
            if edge is not None:
                found[(name, edge.child_cols, edge.parent)] = edge
    return sorted(found.values(), key=lambda e: (e.child, e.child_cols, e.parent))


def _edge(
    table: Table, cols: tuple[str, ...], parent: str, to: tuple[str, ...], kind: EdgeKind
) -> Edge:
    nullable = all(bool(table.c[c].nullable) for c in cols)
    return Edge(table.name, cols, parent, to, kind, nullable)


def _declared_edge(
    table: Table,
    ref: Reference,
    tables: Mapping[str, Table],
    metadata: MetaData,
    schema: str | None,
) -> Edge | None:
    for name in ref.columns:
        _column(table, name, ref.entry)
    full = qualified(schema, ref.table)
    target = tables[ref.table] if ref.table in tables else metadata.tables.get(full)
    if target is None:
        raise ManifestError(f"{ref.entry}: references table {ref.table!r}, which does not exist")
    to = ref.to or tuple(c.name for c in target.primary_key.columns)
    for name in to:
        _column(target, name, ref.entry)
    if len(to) != len(ref.columns):
        raise ManifestError(
            f"{ref.entry}: {len(ref.columns)} column(s) cannot reference {len(to)} column(s)"
        )
    if ref.table not in tables:
        if ref.kind != EdgeKind.LINK:
            raise ManifestError(
                f"{ref.entry}: table {ref.table!r} is not in the manifest; register it, "
                "or declare the reference kind = 'link'"
            )
        return None  # a link to an unregistered table (a catalogue): nothing to do
    return _edge(table, ref.columns, ref.table, to, ref.kind)


def foreign_edges(tables: Mapping[str, Table], metadata: MetaData) -> tuple[Edge, ...]:
    registered = set(tables.values())
    found = []
    for table in metadata.tables.values():
        if table in registered:
            continue
        for fk in table.foreign_key_constraints:
            if fk.referred_table in registered:
                cols = tuple(c.name for c in fk.columns)
                to = tuple(e.column.name for e in fk.elements)
                found.append(_edge(table, cols, fk.referred_table.name, to, EdgeKind.LINK))
    return tuple(found)
