"""Whose rows can be whose, as far as the schema tells: which tables can hold a subject's
own rows, and, for every reference through which a row that stays may point at a row
erasure removes, what happens then (`ParentErase`). OWNERSHIP.md explains the model.

A reference needs such a *way* when its parent table's rows can be a subject's own and
are deleted, and its child rows may stay: rows of other people (``shared`` and ``link``
references), the subject's anonymised or retained rows, or rows kept as anonymised
tombstones because others point at them. Defaults: an ``owned`` reference is detached
(set to NULL) when it can be; a ``shared`` or ``link`` one keeps the parent row,
anonymised, so the other person's row stays intact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from compliance.errors import ManifestError
from compliance.sources.base import Disposition
from compliance.sources.sql.manifest import Edge, EdgeKind, ParentErase, TableRule
from compliance.sources.sql.schema import Problems

Ways = Mapping[Edge, ParentErase | None]
KEEPING = (ParentErase.ANONYMIZE, ParentErase.RETAIN)


def owning_tables(rules: Mapping[str, TableRule], edges: Iterable[Edge]) -> frozenset[str]:
    """Tables with identity columns, and their children through owned references."""
    return _spread(rules, edges, shared=False)


def reachable_tables(rules: Mapping[str, TableRule], edges: Iterable[Edge]) -> frozenset[str]:
    """Owning tables, and what shared references from reached tables point at."""
    return _spread(rules, edges, shared=True)


def _spread(
    rules: Mapping[str, TableRule], edges: Iterable[Edge], *, shared: bool
) -> frozenset[str]:
    """From tables with identity columns, down owned references (and, with `shared`, up
    shared ones), to a fixpoint."""
    edges = list(edges)
    seen = {name for name, rule in rules.items() if rule.identities}
    changed = True
    while changed:
        changed = False
        for e in edges:
            if e.kind == EdgeKind.OWNED and e.parent in seen and e.child not in seen:
                seen.add(e.child)
                changed = True
            if shared and e.kind == EdgeKind.SHARED and e.child in seen and e.parent not in seen:
                seen.add(e.parent)
                changed = True
    return frozenset(seen)


def find_ways(
    rules: Mapping[str, TableRule], edges: Iterable[Edge], owning: frozenset[str]
) -> dict[Edge, ParentErase | None]:
    """The way of every reference that needs one (None: needs one, has no default)."""
    edges = list(edges)
    kept: set[str] = set()  # tables that may keep rows as tombstones
    while True:
        ways = {
            e: e.on_parent_erase or _default(e) for e in edges if _needs_way(e, rules, owning, kept)
        }
        more = {e.parent for e, way in ways.items() if way in KEEPING}
        if more <= kept:
            return ways
        kept |= more


def _needs_way(
    e: Edge, rules: Mapping[str, TableRule], owning: frozenset[str], kept: set[str]
) -> bool:
    if e.parent not in owning or rules[e.parent].on_erase != Disposition.DELETE:
        return False
    if e.kind != EdgeKind.OWNED:
        return True  # other people's rows may point at the subject's
    return rules[e.child].on_erase != Disposition.DELETE or e.child in kept


def _default(e: Edge) -> ParentErase | None:
    if e.kind == EdgeKind.OWNED:
        return ParentErase.DETACH if e.nullable else None
    return ParentErase.ANONYMIZE


def check_ways(
    rules: Mapping[str, TableRule],
    edges: Iterable[Edge],
    ways: Ways,
    owning: frozenset[str],
    problems: Problems,
) -> None:
    """Every way can be carried out; a NOT NULL link from rows erased later can be
    detached. Problems are gathered in the manifest's table order."""
    position = {name: i for i, name in enumerate(rules)}
    for e in sorted(edges, key=lambda e: (position[e.child], e.child_cols, e.parent)):
        if e in ways:
            problems.check(_check_way, rules, e, ways[e])
        repoints = ways.get(e) == ParentErase.PLACEHOLDER
        if _erased_later(rules, owning, e) and not e.nullable and not repoints:
            problems.check(_refuse_not_null_link, rules, e)


def _check_way(rules: Mapping[str, TableRule], e: Edge, way: ParentErase | None) -> None:
    child, parent = rules[e.child], rules[e.parent]
    where = e.entry or child.entry
    declare = "" if e.entry else f" (declare the reference under {child.entry}.references)"
    if way is None:
        raise ManifestError(
            f"{where}: {e} is NOT NULL and {_why(rules, e)} while erasure deletes the "
            f"{e.parent} rows they point at; set on_parent_erase = 'placeholder' (and "
            f"declare a placeholder row for {e.parent}) or 'anonymize' (keep those rows as "
            f"anonymised tombstones){declare}"
        )
    if way == ParentErase.DETACH and not e.nullable:
        raise ManifestError(
            f"{where}: on_parent_erase = 'detach' needs a nullable column, and {e} is NOT NULL;"
            " use 'placeholder' or 'anonymize'"
        )
    if way == ParentErase.ANONYMIZE and not parent.anonymize:
        raise ManifestError(
            f"{parent.entry}: {e}: {_why(rules, e)}, so {e.parent} rows they point at are "
            f"kept anonymised when their subject is erased; declare which columns: anonymize ="
            " { column = 'null' | 'redact' | 'hmac', ... } here, or give the reference"
            f" on_parent_erase = 'detach' (nullable) or 'retain' with a legal_basis{declare}"
        )
    if way == ParentErase.PLACEHOLDER and not parent.placeholder:
        raise ManifestError(
            f"{where}: on_parent_erase = 'placeholder' needs a placeholder row: declare "
            f"placeholder = {{ key = value, ... }} under {parent.entry}"
        )


def _why(rules: Mapping[str, TableRule], e: Edge) -> str:
    if e.kind != EdgeKind.OWNED:
        return f"rows of other people in {e.child} may point at a subject's rows"
    on_erase = rules[e.child].on_erase
    if on_erase != Disposition.DELETE:
        return f"its rows stay (on_erase = '{on_erase}')"
    return f"{e.child} rows kept for others stay"


def _erased_later(rules: Mapping[str, TableRule], owning: frozenset[str], e: Edge) -> bool:
    """A link whose child rows may be the subject's, deleted after the parent's."""
    return (
        e.kind == EdgeKind.LINK
        and e.child in owning
        and rules[e.child].on_erase == Disposition.DELETE
        and e.parent in owning
        and rules[e.parent].on_erase == Disposition.DELETE
    )


def _refuse_not_null_link(rules: Mapping[str, TableRule], e: Edge) -> None:
    raise ManifestError(
        f"{e.entry or rules[e.child].entry}: {e} is NOT NULL, but erasure deletes "
        f"{e.parent} rows and must first detach what still points at them; "
        "make the column nullable, delete this table's rows too, or retain the parent"
    )
