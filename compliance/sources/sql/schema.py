"""The SQL manifest checked against the reflected schema: every table, column and key it
names exists and fits its use, and references (reflected foreign keys and declared ones)
become the graph's edges. A mistake is a `ManifestError` naming its manifest entry;
`Problems` gathers them, so the loader reports every mistake at once, in manifest order.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

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

T = TypeVar("T")


class Problems:
    """Manifest mistakes found so far; `check` runs one check and keeps its error."""

    def __init__(self) -> None:
        self.errors: list[ManifestError] = []

    def check(self, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except ManifestError as exc:
            self.errors.append(exc)
            return None

    def raise_any(self) -> None:
        if self.errors:
            raise ManifestError.of(self.errors)


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


def check_rule(rule: TableRule, table: Table, problems: Problems) -> None:
    for ident in rule.identities:
        problems.check(_column, table, ident.column, f"{rule.entry}.identities")
    for name in rule.export_exclude:
        problems.check(_column, table, name, f"{rule.entry}.export_exclude")
    problems.check(_check_disposition, rule)
    for name, strategy in rule.anonymize:
        entry = f"{rule.entry}.anonymize.{name}"
        problems.check(_check_strategy, table, name, strategy, entry)
    problems.check(_check_placeholder, rule, table)


def _check_disposition(rule: TableRule) -> None:
    if rule.on_erase == Disposition.RETAIN and not rule.legal_basis:
        raise ManifestError(f"{rule.entry}: on_erase = 'retain' needs a legal_basis")
    if rule.on_erase == Disposition.ANONYMIZE and not rule.anonymize:
        raise ManifestError(f"{rule.entry}: on_erase = 'anonymize' needs an anonymize table")
    if rule.anonymize and rule.on_erase == Disposition.RETAIN:
        raise ManifestError(
            f"{rule.entry}: 'anonymize' is set but on_erase = 'retain' keeps rows as they are;"
            " use on_erase = 'anonymize', or drop the anonymize table"
        )


def _check_strategy(table: Table, name: str, strategy: Strategy, entry: str) -> None:
    column = _column(table, name, entry)
    if column.primary_key:
        raise ManifestError(f"{entry}: a primary key column cannot be anonymised")
    text = isinstance(column.type, String)
    if not text and not column.nullable:
        raise ManifestError(
            f"{entry}: column is NOT NULL and not text, so it cannot be anonymised in place;"
            " leave it out of anonymize, and if it references a row that erasure removes,"
            " give that reference on_parent_erase = 'placeholder' or 'anonymize'"
        )
    if strategy == Strategy.NULL and not column.nullable:
        raise ManifestError(f"{entry}: column is NOT NULL; use 'redact' or 'hmac' instead")
    if strategy in (Strategy.REDACT, Strategy.HMAC):
        if not text:
            raise ManifestError(f"{entry}: '{strategy}' needs a text column; use 'null'")
        need = HMAC_LENGTH if strategy == Strategy.HMAC else len(REDACTED)
        length = column.type.length  # type: ignore[attr-defined]
        if length is not None and length < need:
            fix = "use 'null'" if column.nullable else "leave the column out of anonymize"
            raise ManifestError(f"{entry}: '{strategy}' needs room for {need} characters; {fix}")


def _check_placeholder(rule: TableRule, table: Table) -> None:
    if not rule.placeholder:
        return
    entry = f"{rule.entry}.placeholder"
    given = dict(rule.placeholder)
    for name in given:
        _column(table, name, entry)
    key = rule.key or tuple(c.name for c in table.primary_key.columns)
    missing = [c for c in key if c not in given]
    missing += [
        c.name
        for c in table.columns
        if not c.nullable and c.name not in given and c.server_default is None
        and not (c.primary_key and c.autoincrement is True) and c.name not in missing
    ]  # fmt: skip
    if missing:
        raise ManifestError(f"{entry}: give a value for {', '.join(missing)} (key, NOT NULL)")


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
    problems: Problems,
    source: str,
) -> list[Edge]:
    found: dict[tuple[str, tuple[str, ...], str], Edge] = {}
    for name, table in tables.items():
        for fk in table.foreign_key_constraints:
            parent = fk.referred_table.name
            if parent not in tables or fk.referred_table is not tables[parent]:
                continue  # a registered table pointing outside: never followed
            cols = tuple(c.name for c in fk.columns)
            kind = EdgeKind.LINK if parent == name else EdgeKind.OWNED
            found[(name, cols, parent)] = _edge(
                table, cols, parent, tuple(e.column.name for e in fk.elements), kind
            )
    for name, rule in rules.items():
        for ref in rule.references:
            edge = problems.check(
                _declared_edge, tables[name], ref, tables, metadata, schema, source
            )
            if edge is not None:
                found[(name, edge.child_cols, edge.parent)] = edge
    return sorted(found.values(), key=lambda e: (e.child, e.child_cols, e.parent))


def _edge(
    table: Table,
    cols: tuple[str, ...],
    parent: str,
    to: tuple[str, ...],
    kind: EdgeKind,
    ref: Reference | None = None,
) -> Edge:
    nullable = all(bool(table.c[c].nullable) for c in cols)
    if ref is None:
        return Edge(table.name, cols, parent, to, kind, nullable)
    way, basis = ref.on_parent_erase, ref.legal_basis
    return Edge(table.name, cols, parent, to, kind, nullable, way, basis, ref.entry)


def _declared_edge(
    table: Table,
    ref: Reference,
    tables: Mapping[str, Table],
    metadata: MetaData,
    schema: str | None,
    source: str,
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
    for mine, theirs in zip(ref.columns, to, strict=True):
        _check_types(ref.entry, source, table.c[mine], target.c[theirs])
    if ref.table not in tables:
        if ref.kind != EdgeKind.LINK:
            raise ManifestError(
                f"{ref.entry}: table {ref.table!r} is not in the manifest; register it, "
                "or declare the reference kind = 'link'"
            )
        if ref.on_parent_erase is not None:
            raise ManifestError(
                f"{ref.entry}: on_parent_erase has no effect on a link to an unregistered"
                f" table ({ref.table!r} rows are never erased); remove it"
            )
        return None  # a link to an unregistered table (a catalogue): nothing to do
    return _edge(table, ref.columns, ref.table, to, ref.kind, ref)


def _family(column: Column[Any]) -> str:
    """The kind of value a column holds, for comparing the two ends of a reference."""
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return ""
    if kind is bool:
        return "boolean"
    if issubclass(kind, int | decimal.Decimal | float):
        return "number"
    if issubclass(kind, str):
        return "text"
    if kind is uuid.UUID:
        return "uuid"
    if issubclass(kind, datetime.date | datetime.time | datetime.timedelta):
        return "time"
    return kind.__name__


def _check_types(entry: str, source: str, mine: Column[Any], theirs: Column[Any]) -> None:
    """Both ends of a reference hold the same kind of value (integer to integer...)."""
    a, b = _family(mine), _family(theirs)
    if a and b and a != b:
        raise ManifestError(
            f"{entry}: {source}.{mine.table.name}.{mine.name} -> "
            f"{theirs.table.name}.{theirs.name} joins {mine.type} to {theirs.type}; "
            "a reference needs columns of the same type (fix 'columns'/'to', or the schema)"
        )


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
