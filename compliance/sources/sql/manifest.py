"""The SQL manifest's vocabulary: table rules, identity columns, anonymisation strategies,
and references between tables (as declared, and as edges of the graph).

Each reference has a kind, after Meta's DELF:

- ``owned``: rows of the child that point at a subject's row are the subject's too, and
  go with it (``orders.user_id -> users``). The default for a reflected foreign key.
- ``shared``: the parent is shared (``users.address_id -> addresses``): a subject's
  reference makes the parent a candidate, erased only if nothing else still uses it.
- ``link``: never followed (``order_items.product_id -> products``, or a self-reference
  like ``users.referred_by``, its default).

Whose row is whose (the subject's, another subject's, shared, nobody's) follows from
these kinds; OWNERSHIP.md in this folder says how. When a row that stays points at a row
erasure removes, the reference's ``on_parent_erase`` says what happens (`ParentErase`).

The SQL connector's part of the manifest: tables, identities, references, anonymisation.

```toml
[sources.app]
kind = "sql"
url = "${APP_DATABASE_URL}"           # or "sqlite:///app.db" (relative to this file)
schema = "public"                     # optional
ignore_tables = ["products"]          # reviewed: hold no personal data (`sources check`)
check_schemas = ["public", "backup"]  # schemas `sources check` inspects (default: all)
check_exclude_schemas = ["scratch"]   # ... and the ones it skips
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

[sources.app.tables.cards]                            # owned by users (a foreign key)
anonymize = { holder = "redact", number = "null" }    # for cards kept because others use them

[sources.app.tables.orders]
references = [
  { columns = "card_id", table = "cards", kind = "shared" },   # on_parent_erase = "anonymize"
  { columns = "referrer_id", table = "users", kind = "link", on_parent_erase = "detach" },
]

[sources.app.tables.customers]
placeholder = { id = 0, name = "Erased customer" }    # created on first use
```

An identity column may also be a table: ``email = { type = "email", resolve = false,
match = "exact" }``; ``resolve = false`` matches the column without adopting its values
as new identities (e.g. a gift recipient's email), and emails match case-insensitively
unless ``match = "exact"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from compliance.errors import ManifestError, ValidationError
from compliance.identities import IdentityType, validate_type
from compliance.sources.art15 import legal_text, policy_text
from compliance.sources.base import Art15, Disposition
from compliance.sources.manifest import Spec
from compliance.sources.sql.policies import RetentionRule, legal_days, parse_retention

HMAC_LENGTH = 32
REDACTED = "[redacted]"


class EdgeKind(StrEnum):
    OWNED = "owned"
    SHARED = "shared"
    LINK = "link"


class ParentErase(StrEnum):
    """What happens when a row that stays points (through one reference) at a row of the
    subject that erasure removes: B's card, which A's order was paid with."""

    ANONYMIZE = "anonymize"  # keep the parent row, its personal columns anonymised
    DETACH = "detach"  # set the reference to NULL (the staying row is changed: reported)
    PLACEHOLDER = "placeholder"  # point the reference at the parent table's placeholder row
    RETAIN = "retain"  # keep the parent row as it is; needs a legal_basis on the reference


class Strategy(StrEnum):
    """How one column is anonymised."""

    NULL = "null"
    REDACT = "redact"  # a fixed marker, REDACTED
    HMAC = "hmac"  # 32 hex chars of HMAC-SHA256(pseudonym key, value): joinable, not reversible


@dataclass(frozen=True)
class IdentityColumn:
    column: str
    type: str  # an identity type: email, user_id, ..., custom:<name>
    resolve: bool = True  # rows matched by identity yield this column as a new identity
    lower: bool = False  # compare lower(column): emails stored with capitals still match


@dataclass(frozen=True)
class Reference:
    """A reference as written in the manifest (child side is the table it sits in)."""

    columns: tuple[str, ...]
    table: str
    to: tuple[str, ...]  # empty: the referenced table's primary key
    kind: EdgeKind
    entry: str  # manifest path, for errors
    on_parent_erase: ParentErase | None = None  # None: the default for the kind
    legal_basis: str = ""  # required for on_parent_erase = "retain"


@dataclass(frozen=True)
class TableRule:
    """One registered table, as the manifest describes it."""

    name: str
    entry: str
    identities: tuple[IdentityColumn, ...] = ()
    on_erase: Disposition = Disposition.DELETE
    anonymize: tuple[tuple[str, Strategy], ...] = ()
    legal_basis: str = ""  # required for `retain`
    art15: Art15 = field(default_factory=Art15)
    export_exclude: tuple[str, ...] = ()
    key: tuple[str, ...] = ()  # declared row key, for tables without a primary key
    references: tuple[Reference, ...] = ()
    placeholder: tuple[tuple[str, Any], ...] = ()  # column values of the placeholder row
    retention: tuple[RetentionRule, ...] = ()  # retention policies (see `policies`)
    legal_retention_days: int = 0  # how long the law requires the rows to be kept


@dataclass(frozen=True)
class Edge:
    """A reference from `child`'s columns to `parent`'s columns."""

    child: str
    child_cols: tuple[str, ...]
    parent: str
    parent_cols: tuple[str, ...]
    kind: EdgeKind
    nullable: bool  # every child column accepts NULL (so it can be detached)
    on_parent_erase: ParentErase | None = None  # as declared; None: the default
    legal_basis: str = ""
    entry: str = ""  # the manifest entry that declared it ("" for a reflected FK)

    def __str__(self) -> str:
        return f"{self.child}({', '.join(self.child_cols)}) -> {self.parent}"


def qualified(schema: str | None, name: str) -> str:
    """A table's key in reflected `MetaData.tables`: ``schema.name``, or the bare name."""
    return f"{schema}.{name}" if schema else name


_ON_ERASE = (Disposition.DELETE, Disposition.ANONYMIZE, Disposition.RETAIN)


@dataclass(frozen=True)
class SqlManifest:
    url: str
    schema: str | None
    ignore_tables: tuple[str, ...]
    rules: tuple[TableRule, ...]
    check_schemas: tuple[str, ...] = ()  # what `sources check` inspects; empty: every schema
    check_exclude_schemas: tuple[str, ...] = ()


def parse_sql_manifest(spec: Spec, url: str) -> SqlManifest:
    """Read the source-level keys and every table (the caller reads `url`)."""
    defaults = spec.art15()
    if defaults.description:
        raise spec.error("'description' titles one table: set it on each table under 'tables'")
    schema = spec.string("schema") or None
    ignore = spec.list_of_str("ignore_tables")
    rules, problems = [], []
    for name, child in spec.tables("tables"):
        try:
            rules.append(_table(name, child, defaults))
        except ManifestError as exc:
            problems.append(exc)
    if problems:
        raise ManifestError.of(problems)
    if not rules:
        raise spec.error("a sql source needs at least one table under 'tables'")
    for name in ignore:
        if name in {r.name for r in rules}:
            raise spec.error(f"table {name!r} is both registered and in ignore_tables")
    include, exclude = _check_schemas(spec)
    return SqlManifest(
        url, schema, ignore, tuple(rules), check_schemas=include, check_exclude_schemas=exclude
    )


def _check_schemas(spec: Spec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`check_schemas` and `check_exclude_schemas`: which schemas `gdpr sources check`
    inspects. Whether they exist is checked when it runs (it connects)."""
    include = _schema_names(spec, "check_schemas")
    exclude = _schema_names(spec, "check_exclude_schemas")
    for name in include:
        if name in exclude:
            raise spec.error(f"schema {name!r} is both in check_schemas and check_exclude_schemas")
    return include, exclude


def _schema_names(spec: Spec, key: str) -> tuple[str, ...]:
    names = spec.list_of_str(key)
    for index, name in enumerate(names):
        if not name.strip():
            raise spec.error(f"'{key}' entry {index + 1} is empty")
        if name in names[:index]:
            raise spec.error(f"'{key}' names schema {name!r} twice")
    return names


def _table(name: str, spec: Spec, defaults: Art15) -> TableRule:
    on_erase = Disposition(spec.choice("on_erase", tuple(_ON_ERASE), Disposition.DELETE))
    retention = parse_retention(spec)
    legal = legal_days(spec)
    rule = TableRule(
        name=name,
        entry=spec.path,
        identities=tuple(_identities(spec.table("identities"))),
        on_erase=on_erase,
        anonymize=tuple(_strategies(spec.table("anonymize"))),
        legal_basis=spec.string("legal_basis", defaults.legal_basis),
        art15=_art15(spec, defaults, retention, legal),
        export_exclude=spec.list_of_str("export_exclude"),
        key=spec.list_of_str("key"),
        references=tuple(_reference(ref) for ref in spec.table_list("references")),
        placeholder=tuple(_placeholder(spec.table("placeholder"))),
        retention=retention,
        legal_retention_days=legal,
    )
    spec.done()
    return rule


def _art15(spec: Spec, defaults: Art15, rules: tuple[RetentionRule, ...], legal: int) -> Art15:
    """The table's Art. 15 facts over the source's. How long rows are kept, in order:
    the table's `retention` text, its retention policies in words, its legal minimum
    (``legal_retention_days``), the source's `retention` text."""
    facts = spec.art15(defaults)
    if isinstance(spec.data.get("retention"), str):
        return facts
    said = [
        policy_text(r.days, r.column, whole_subject=r.scope == "subject", narrowed=bool(r.where))
        for r in rules
    ]
    text = "; ".join(said) or (legal_text(legal) if legal else "")
    return replace(facts, retention=text) if text else facts


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
        on_parent_erase=_parent_erase(spec),
        legal_basis=spec.string("legal_basis"),
    )
    if ref.legal_basis and ref.on_parent_erase != ParentErase.RETAIN:
        raise spec.error("'legal_basis' on a reference goes with on_parent_erase = 'retain'")
    if ref.on_parent_erase == ParentErase.RETAIN and not ref.legal_basis:
        raise spec.error("on_parent_erase = 'retain' needs a legal_basis on the reference")
    spec.done()
    return ref


def _parent_erase(spec: Spec) -> ParentErase | None:
    value = spec.choice("on_parent_erase", ("", *(w.value for w in ParentErase)), "")
    return ParentErase(value) if value else None


def _placeholder(spec: Spec) -> list[tuple[str, Any]]:
    found = []
    for column in spec.data:
        value = spec.raw(column)
        if isinstance(value, dict | list):
            raise spec.error(f"'{column}' must be a single value (text, number, date)")
        found.append((column, value))
    return found


def _names(spec: Spec, key: str, *, required: bool) -> tuple[str, ...]:
    value = spec.raw(key)
    if value is None and not required:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise spec.error(f"'{key}' must be a column name or a non-empty list of column names")
