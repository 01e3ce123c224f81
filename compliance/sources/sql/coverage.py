"""`gdpr sources check` for a SQL source: tables that hold personal data outside the
manifest.

Every schema the connection can see is inspected (PostgreSQL: all but the system schemas;
SQLite: ``main`` and the attached databases), narrowed by the manifest's `check_schemas`
and `check_exclude_schemas`. Only names are read, never a row: per schema one listing of
tables, of columns and of foreign keys. A table that is not registered (or ignored) is a
gap when it

- has a foreign key to a registered table that holds subject data,
- copies a registered table: it has all of its columns (``backup.users``, made with
  ``CREATE TABLE ... AS SELECT``, has no foreign key at all), or
- has columns whose names look personal (`check.personal_columns`).

PostgreSQL declarative partitions belong to their root table: they are never reported on
their own, and a foreign key declared on a partition counts for the root; so do a
partition detached by retention waiting out its grace period (`partitions.detached`) and
its foreign keys. Registered and ignored tables live in the manifest's schema (the home
schema), and gaps there are named as they are (``marketing_leads``); gaps elsewhere carry
their schema (``backup.users``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection, Table, inspect, text
from sqlalchemy.engine.reflection import Inspector

from compliance.errors import ManifestError
from compliance.sources.check import Gap, Kind, personal_columns
from compliance.sources.sql.manifest import SqlManifest
from compliance.sources.sql.partitions import detached_parents

MIN_COPY_COLUMNS = 3  # a table with all columns of a registered one this wide is a copy
# Schemas that belong to the database itself, by dialect (PostgreSQL: also every "pg_*").
SYSTEM_SCHEMAS: Mapping[str, frozenset[str]] = {
    "postgresql": frozenset({"information_schema"}),
    "mysql": frozenset({"information_schema", "mysql", "performance_schema", "sys"}),
    "mariadb": frozenset({"information_schema", "mysql", "performance_schema", "sys"}),
}

Name = tuple[str, str]  # (schema, table)

# Declarative partitions (tables and foreign tables, not index partitions) and their parent.
_PARTITIONS = text(
    "SELECT cn.nspname, c.relname, pn.nspname, p.relname"
    " FROM pg_catalog.pg_inherits i"
    " JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid"
    " JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace"
    " JOIN pg_catalog.pg_class p ON p.oid = i.inhparent"
    " JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace"
    " WHERE c.relispartition AND c.relkind IN ('r', 'p', 'f')"
)


class Registered(Protocol):
    """What the check needs of the reference graph (`graph.Graph` is one)."""

    @property
    def tables(self) -> Mapping[str, Table]: ...  # registered name -> reflected table

    @property
    def reachable(self) -> frozenset[str]: ...  # registered tables holding subject data


class Coverable(Protocol):
    """What the check needs of a SQL source (`source.SqlSource` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def entry(self) -> str: ...

    @property
    def manifest(self) -> SqlManifest: ...

    @property
    def graph(self) -> Registered: ...

    def connect(self) -> AbstractContextManager[Connection]: ...


@dataclass
class _Table:
    """One table as the check sees it: its columns, and the foreign keys of it and of
    its partitions (referenced table, partitions resolved to their root -> columns)."""

    schema: str
    name: str
    columns: tuple[str, ...] = ()
    references: dict[Name, list[str]] = field(default_factory=dict)


def gaps(source: Coverable) -> list[Gap]:
    """Tables outside the manifest that point at subject data, copy a registered table
    or look personal; one gap per table, names only."""
    graph = source.graph  # checks the manifest (and ignore_tables) against the database
    manifest = source.manifest
    with source.connect() as conn:
        inspector = inspect(conn)
        default = inspector.default_schema_name or ""  # where unqualified names resolve
        home = manifest.schema or default
        schemas = _schemas(inspector, manifest, source.entry)
        tables = _tables(inspector, schemas, _partition_roots(conn), default)
    covered = {(home, name) for name in (*graph.tables, *manifest.ignore_tables)}
    subject = {(home, name) for name in graph.reachable}
    shapes = {n: frozenset(c.name.lower() for c in t.columns) for n, t in graph.tables.items()}
    found = []
    for table in sorted(tables, key=lambda t: (t.schema != home, t.schema, t.name)):
        if (table.schema, table.name) in covered:
            continue
        location = table.name if table.schema == home else f"{table.schema}.{table.name}"
        gap = _gap(source.name, location, table, subject, shapes)
        if gap is not None:
            found.append(gap)
    return found


def _schemas(inspector: Inspector, manifest: SqlManifest, entry: str) -> list[str]:
    """The schemas to inspect: every visible non-system one, or the include list."""
    dialect = inspector.dialect.name
    system = SYSTEM_SCHEMAS.get(dialect, frozenset())
    every = inspector.get_schema_names()
    visible = [
        s
        for s in every
        if s not in system and not (dialect == "postgresql" and s.startswith("pg_"))
    ]
    for name in manifest.check_schemas:
        if name not in visible:
            what = "is a system schema" if name in every else "does not exist in the database"
            raise ManifestError(f"{entry}.check_schemas: schema {name!r} {what}")
    chosen = manifest.check_schemas or visible
    return [s for s in chosen if s not in manifest.check_exclude_schemas]


def _partition_roots(conn: Connection) -> dict[Name, Name]:
    """Every PostgreSQL declarative partition (attached, or detached by retention) -> the
    partitioned table at the top."""
    if conn.dialect.name != "postgresql":
        return {}
    parent: dict[Name, Name] = {
        (row[0], row[1]): (row[2], row[3]) for row in conn.execute(_PARTITIONS)
    }
    parent.update(detached_parents(conn))
    roots = {}
    for child in parent:
        top = parent[child]
        while top in parent:  # a partition that is itself partitioned
            top = parent[top]
        roots[child] = top
    return roots


def _tables(
    inspector: Inspector, schemas: Iterable[str], roots: Mapping[Name, Name], default: str
) -> list[_Table]:
    """The tables of `schemas` (partitions folded into their root), with their columns
    and foreign keys; one listing of each per schema. A foreign key's target without a
    schema is in the `default` schema (PostgreSQL leaves out the search path's)."""
    found: dict[Name, _Table] = {}
    references: defaultdict[Name, dict[Name, list[str]]] = defaultdict(dict)
    for schema in schemas:
        names = [n for n in inspector.get_table_names(schema) if (schema, n) not in roots]
        if not names:
            continue
        for (_, name), columns in inspector.get_multi_columns(schema, filter_names=names).items():
            found[(schema, name)] = _Table(schema, name, tuple(c["name"] for c in columns))
        for (_, name), fks in inspector.get_multi_foreign_keys(schema).items():
            owner = roots.get((schema, name), (schema, name))
            for fk in fks:
                target = (fk["referred_schema"] or default, fk["referred_table"])
                cols = references[owner].setdefault(roots.get(target, target), [])
                cols.extend(c for c in fk["constrained_columns"] if c not in cols)
    for key, refs in references.items():
        if key in found:  # a partition's root outside the inspected schemas stays unseen
            found[key].references = refs
    return list(found.values())


def _gap(
    source: str,
    location: str,
    table: _Table,
    subject: Collection[Name],
    shapes: Mapping[str, frozenset[str]],
) -> Gap | None:
    reasons: list[str] = []
    columns: list[str] = []
    refs = sorted(target for target in table.references if target in subject)
    if refs:
        reasons.append(f"references {', '.join(name for _, name in refs)} (subject data)")
        columns.extend(c for target in refs for c in table.references[target])
    copied = _copied(frozenset(c.lower() for c in table.columns), shapes)
    if copied:
        reasons.append(f"copies the registered table {', '.join(copied)} (same columns)")
    personal = personal_columns(table.columns)
    for kind in Kind:
        named = [c for c, k in personal if k == kind]
        if named:
            reasons.append(f"{kind}: {', '.join(named)}")
    columns.extend(c for c, _ in personal)
    if not reasons:
        return None
    reason = "; ".join(reasons) + "; not in the manifest"
    return Gap(source, location, reason, tuple(dict.fromkeys(columns)))


def _copied(columns: frozenset[str], shapes: Mapping[str, frozenset[str]]) -> list[str]:
    """Registered tables whose columns `columns` has: all of them (and at least
    `MIN_COPY_COLUMNS`), or exactly them (at least two)."""
    return sorted(
        name
        for name, shape in shapes.items()
        if (len(shape) >= MIN_COPY_COLUMNS and shape <= columns)
        or (len(shape) >= 2 and shape == columns)
    )
