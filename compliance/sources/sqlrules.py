"""The SQL manifest's vocabulary: table rules, identity columns, anonymisation strategies,
and references between tables (as declared, and as edges of the graph).

Each reference has a kind, after Meta's DELF:

- ``owned``: rows of the child that point at a subject's row are the subject's too, and
  go with it (``orders.user_id -> users``). The default for a reflected foreign key.
- ``shared``: the parent is shared (``users.address_id -> addresses``): a subject's
  reference makes the parent a candidate, erased only if nothing else still uses it.
- ``link``: never followed (``order_items.product_id -> products``, or a self-reference
  like ``users.referred_by``, its default). When the row it points at is deleted, the
  reference is detached (set to NULL) first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from compliance.sources.base import Art15, Disposition

HMAC_LENGTH = 32
REDACTED = "[redacted]"


class EdgeKind(StrEnum):
    OWNED = "owned"
    SHARED = "shared"
    LINK = "link"


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


@dataclass(frozen=True)
class Edge:
    """A reference from `child`'s columns to `parent`'s columns."""

    child: str
    child_cols: tuple[str, ...]
    parent: str
    parent_cols: tuple[str, ...]
    kind: EdgeKind
    nullable: bool  # every child column accepts NULL (so it can be detached)

    def __str__(self) -> str:
        return f"{self.child}({', '.join(self.child_cols)}) -> {self.parent}"


def qualified(schema: str | None, name: str) -> str:
    """A table's key in reflected `MetaData.tables`: ``schema.name``, or the bare name."""
    return f"{schema}.{name}" if schema else name
