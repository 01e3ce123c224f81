"""The SQL connector's part of the manifest: tables, identities, references, anonymisation.

```toml
[sources.app]
kind = "sql"
url = "${APP_DATABASE_URL}"           # or "sqlite:///app.db" (relative to this file)
schema = "public"                     # optional
ignore_tables = ["products"]          # reviewed: hold no personal data (`sources check`)
purpose = "Running the shop"          # Art. 15 defaults for every table below

[sources.app.tables.users]
identities = { email = "email", id = "user_id" }     # column = identity type
on_erase = "delete"                                   # delete | anonymize | retain
export_exclude = ["password_hash"]

[sources.app.tables.payments]
on_erase = "anonymize"
anonymize = { billing_name = "redact", card_last4 = "null", email = "hmac" }
legal_basis = "Art. 6(1)(c): tax law"

[sources.app.tables.newsletter]
references = [{ columns = ["user_ref"], table = "users", kind = "owned" }]
```

An identity column may also be a table: ``email = { type = "email", resolve = false,
match = "exact" }``; ``resolve = false`` matches the column without adopting its values
as new identities (e.g. a gift recipient's email), and emails match case-insensitively
unless ``match = "exact"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from compliance.errors import ValidationError
from compliance.identities import IdentityType, validate_type
from compliance.sources.base import Art15, Disposition
from compliance.sources.manifest import Spec
from compliance.sources.sqlrules import EdgeKind, IdentityColumn, Reference, Strategy, TableRule

_ON_ERASE = (Disposition.DELETE, Disposition.ANONYMIZE, Disposition.RETAIN)


@dataclass(frozen=True)
class SqlManifest:
    url: str
    schema: str | None
    ignore_tables: tuple[str, ...]
    rules: tuple[TableRule, ...]


def parse_sql_manifest(spec: Spec, url: str) -> SqlManifest:
    """Read the source-level keys and every table (the caller reads `url`)."""
    defaults = spec.art15()
    schema = spec.string("schema") or None
    ignore = spec.list_of_str("ignore_tables")
    rules = tuple(_table(name, child, defaults) for name, child in spec.tables("tables"))
    if not rules:
        raise spec.error("a sql source needs at least one table under 'tables'")
    for name in ignore:
        if name in {r.name for r in rules}:
            raise spec.error(f"table {name!r} is both registered and in ignore_tables")
    return SqlManifest(url, schema, ignore, rules)


def _table(name: str, spec: Spec, defaults: Art15) -> TableRule:
    on_erase = Disposition(spec.choice("on_erase", tuple(_ON_ERASE), Disposition.DELETE))
    art15 = spec.art15(defaults)
    rule = TableRule(
        name=name,
        entry=spec.path,
        identities=tuple(_identities(spec.table("identities"))),
        on_erase=on_erase,
        anonymize=tuple(_strategies(spec.table("anonymize"))),
        legal_basis=spec.string("legal_basis", defaults.legal_basis),
        art15=art15,
        export_exclude=spec.list_of_str("export_exclude"),
        key=spec.list_of_str("key"),
        references=tuple(_reference(ref) for ref in spec.table_list("references")),
    )
    spec.done()
    return rule


def _identities(spec: Spec) -> list[IdentityColumn]:
    found = []
    for column in spec.data:
        value = spec.raw(column)
        if isinstance(value, str):
            found.append(_identity(spec, column, value, resolve=True, match=""))
        elif isinstance(value, dict):
            child = spec.table(column)
            found.append(
                _identity(
                    child,
                    column,
                    child.string("type", required=True),
                    resolve=child.flag("resolve", True),
                    match=child.choice("match", ("", "exact", "lower"), ""),
                )
            )
            child.done()
        else:
            raise spec.error(f"'{column}' must be an identity type or a table")
    return found


def _identity(spec: Spec, column: str, kind: str, *, resolve: bool, match: str) -> IdentityColumn:
    try:
        kind = validate_type(kind)
    except ValidationError as exc:
        raise spec.error(f"column {column!r}: {exc}") from None
    lower = match == "lower" or (match == "" and kind == IdentityType.EMAIL)
    return IdentityColumn(column, kind, resolve, lower)


def _strategies(spec: Spec) -> list[tuple[str, Strategy]]:
    found = []
    choices = tuple(s.value for s in Strategy)
    for column in spec.data:
        found.append((column, Strategy(spec.choice(column, choices, ""))))
    return found


def _reference(spec: Spec) -> Reference:
    columns = _names(spec, "columns", required=True)
    ref = Reference(
        columns=columns,
        table=spec.string("table", required=True),
        to=_names(spec, "to", required=False),
        kind=EdgeKind(spec.choice("kind", tuple(k.value for k in EdgeKind), EdgeKind.OWNED)),
        entry=spec.path,
    )
    spec.done()
    return ref


def _names(spec: Spec, key: str, *, required: bool) -> tuple[str, ...]:
    value = spec.raw(key)
    if value is None and not required:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise spec.error(f"'{key}' must be a column name or a non-empty list of column names")
