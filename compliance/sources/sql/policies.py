"""Retention policies of a SQL source: the manifest's ``retention`` key on a table.

```toml
[sources.shop.tables.sessions]
retention = { column = "created_at", days = 30 }                  # rows older than 30 days

[sources.shop.tables.activity_log]
retention = { column = "at", days = 30, where = { kind = ["view", "search"] } }

[sources.shop.tables.users]                                        # accounts closed a year
retention = { column = "closed_at", days = 365, scope = "subject" }  # ago: full erasure

[sources.shop.tables.invoices]
legal_retention_days = 3650         # kept by law: a policy shorter than this is an error
retention = { column = "issued_at", days = 3653 }
```

``scope = "rows"`` (the default) deletes the table's rows past the cutoff, in key-range
batches; a range-partitioned table (PostgreSQL) loses whole partitions past the cutoff
instead (detached, dropped after ``grace_days``, default 7). ``scope = "subject"``
erases each subject whose row is past the cutoff through the full erasure cascade (the
table needs identity columns); ``notify = true`` emails them the receipt.

``where`` narrows a policy with a declarative filter, AND-ed, never raw SQL:
``col = value`` (equal), ``col = [a, b]`` (one of), ``col = { not = v }``,
``col = { not_in = [a, b] }``, ``col = { is_null = true }``.

A table may carry a list of policies (``retention = [{...}, {...}]``), e.g. accounts
closed a year ago and accounts not seen for three years. A policy's name is ``name`` if
given, else ``<source>.<table>`` (``<source>.<table>.<column>`` when the table has more
than one); names are unique across the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table

from compliance.errors import ManifestError
from compliance.retention.policy import Policy, PolicyKind
from compliance.sources.manifest import Spec

DEFAULT_GRACE_DAYS = 7
MAX_DAYS = 100 * 366
SCOPES = ("rows", "subject")
WHERE_OPERATORS = ("not", "in", "not_in", "is_null")


@dataclass(frozen=True)
class RetentionRule:
    """One ``retention`` entry of a table, as written (checked against the schema later)."""

    column: str
    days: int
    scope: str  # rows | subject
    entry: str
    name: str = ""
    where: tuple[tuple[str, str, Any], ...] = ()  # (column, operator, value)
    grace_days: int = DEFAULT_GRACE_DAYS
    notify: bool = False


def parse_retention(spec: Spec) -> tuple[RetentionRule, ...]:
    """The table's ``retention`` entries (a string there is Art. 15 text, not a policy)."""
    value = spec.raw("retention")
    if value is None or isinstance(value, str):
        return ()
    if isinstance(value, dict):
        return (_rule(Spec(value, f"{spec.path}.retention")),)
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        rules = [_rule(Spec(v, f"{spec.path}.retention[{i + 1}]")) for i, v in enumerate(value)]
        return tuple(rules)
    raise spec.error(
        "'retention' must be a policy table ({ column = \"created_at\", days = 30 }),"
        " a list of them, or Art. 15 text"
    )


def _rule(spec: Spec) -> RetentionRule:
    days = _days(spec, "days", required=True)
    rule = RetentionRule(
        column=spec.string("column", required=True),
        days=days,
        scope=spec.choice("scope", SCOPES, "rows"),
        entry=spec.path,
        name=spec.string("name"),
        where=tuple(_where(spec.table("where"))),
        grace_days=spec.integer("grace_days", DEFAULT_GRACE_DAYS, minimum=0),
        notify=spec.flag("notify"),
    )
    if rule.notify and rule.scope != "subject":
        raise spec.error("'notify' goes with scope = 'subject' (rows have no one to tell)")
    if not rule.column.strip():
        raise spec.error("'column' names the timestamp column the age is measured by")
    spec.done()
    return rule


def _days(spec: Spec, key: str, *, required: bool) -> int:
    if not spec.has(key):
        if required:
            raise spec.error(f"missing required key '{key}' (a whole number of days, e.g. 30)")
        return 0
    value = spec.raw(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise spec.error(f"'{key}' must be a whole number of days, not {value!r}")
    if not 1 <= value <= MAX_DAYS:
        raise spec.error(f"'{key}' must be between 1 and {MAX_DAYS} days, not {value}")
    return value


def legal_days(spec: Spec) -> int:
    """``legal_retention_days``: how long the law requires the table's rows to be kept."""
    return _days(spec, "legal_retention_days", required=False)


def _where(spec: Spec) -> Iterator[tuple[str, str, Any]]:
    for column in spec.data:
        value = spec.raw(column)
        if isinstance(value, dict):
            yield _operator(spec.table(column), column)
        elif isinstance(value, list):
            _scalars(spec, column, value)
            yield column, "in", tuple(value)
        else:
            _scalars(spec, column, [value])
            yield column, "=", value


def _operator(spec: Spec, column: str) -> tuple[str, str, Any]:
    if len(spec.data) != 1 or next(iter(spec.data)) not in WHERE_OPERATORS:
        raise spec.error(
            f'a condition is one of {", ".join(WHERE_OPERATORS)}, e.g. {{ not = "active" }}'
        )
    op = next(iter(spec.data))
    value = spec.raw(op)
    if op == "is_null":
        if not isinstance(value, bool):
            raise spec.error("'is_null' must be true or false")
        return column, op, value
    values = value if op in ("in", "not_in") else [value]
    if op in ("in", "not_in") and (not isinstance(value, list) or not value):
        raise spec.error(f"'{op}' must be a non-empty list of values")
    _scalars(spec, op, values)
    return column, op, tuple(value) if isinstance(value, list) else value


def _scalars(spec: Spec, key: str, values: list[Any]) -> None:
    for value in values:
        if isinstance(value, dict | list) or value is None:
            raise spec.error(f"'{key}' must hold plain values (text, number, boolean, date)")


# --- checked against the schema -----------------------------------------------------


@dataclass(frozen=True)
class TableFacts:
    """What the checks need to know about a table besides its columns."""

    legal_days: int = 0  # legal_retention_days
    linked_from: tuple[str, ...] = ()  # tables pointing at it through a `link` reference
    referenced_by: tuple[str, ...] = ()  # tables whose rows point at its rows
    identities: bool = False  # it has identity columns that name a subject
    key: tuple[str, ...] = ()  # its row key (batches range over a single column)


def check_retention(
    table: Table, rules: tuple[RetentionRule, ...], facts: TableFacts
) -> list[ManifestError]:
    """Problems of a table's policies against its reflected schema, in manifest order."""
    problems: list[ManifestError] = []
    for rule in rules:
        for message in _rule_problems(table, rule, facts):
            problems.append(ManifestError(f"{rule.entry}: {message}"))
    return problems


def _rule_problems(table: Table, rule: RetentionRule, facts: TableFacts) -> Iterator[str]:
    legal = facts.legal_days
    if facts.linked_from:
        yield (
            f"table {table.name!r} is the target of a 'link' reference from"
            f" {', '.join(facts.linked_from)} (rows others point at, like a catalogue);"
            " a retention policy does not belong there"
        )
    elif rule.scope == "rows" and facts.referenced_by:
        yield (
            f"rows of {table.name!r} are referenced by {', '.join(facts.referenced_by)};"
            " deleting them alone would orphan or cascade into those rows: put the policy"
            " on an account table with scope = 'subject', or on the referencing tables"
        )
    if len(facts.key) != 1:
        yield (
            f"batches range over a single-column key; {table.name!r} has"
            f' {len(facts.key) or "no"} key column(s): declare one with key = ["id"]'
        )
    if rule.scope == "subject" and not facts.identities:
        yield (
            f"scope = 'subject' needs identity columns on {table.name!r} (who is erased"
            " is read from the row)"
        )
    if rule.column not in table.c:
        yield f"table {table.name!r} has no column {rule.column!r}"
    elif not is_timestamp(table.c[rule.column]):
        kind = table.c[rule.column].type
        yield f"column {rule.column!r} is {kind}, not a date or timestamp; name one that is"
    if legal and rule.days < legal:
        yield (
            f"keeps rows {rule.days} days, shorter than the legal retention of {legal}"
            " days declared on the table (legal_retention_days)"
        )
    for column, _op, _value in rule.where:
        if column not in table.c:
            yield f"where: table {table.name!r} has no column {column!r}"


def is_timestamp(column: Any) -> bool:
    import datetime

    try:
        kind = column.type.python_type
    except NotImplementedError:
        return False
    return isinstance(kind, type) and issubclass(kind, datetime.date)


def policy_of(source: str, table: str, rule: RetentionRule, many: bool, kind: PolicyKind) -> Policy:
    """The registry-wide `Policy` of one rule (`many`: the table has several)."""
    name = rule.name or (f"{source}.{table}.{rule.column}" if many else f"{source}.{table}")
    return Policy(
        name=name,
        source=source,
        kind=kind,
        days=rule.days,
        location=table,
        column=rule.column,
        where=rule.where,
        entry=rule.entry,
        grace_days=rule.grace_days,
        notify=rule.notify,
    )
