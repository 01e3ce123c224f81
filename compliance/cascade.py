"""The cascade across sources: resolve identities, plan, verify.

`resolve` asks every source for identities linked to the subject's, round after round,
until nothing new turns up (email -> user_id in one database -> customer_id in another).
`discover` does that once per request and keeps the result: identities found are stored
sealed beside the given ones, because erasure removes the very rows that linked them
(after the users row is gone, nothing leads from the email to the user id any more).

Plans and reports here carry counts and location names only, never identity values.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from compliance.errors import IllegalTransitionError, UnsupportedError
from compliance.execution import RunContext
from compliance.identities import Identities, Identity, pseudonym
from compliance.lifecycle import FINAL
from compliance.models import DsrIdentity, DsrRequest, RequestStatus
from compliance.sealed import load_identities, sealed_identity
from compliance.sources.art15 import location_facts, with_legal_bases
from compliance.sources.base import (
    Action,
    Coalescing,
    DataSource,
    Disposition,
    Residue,
    SourcePlan,
)
from compliance.sources.lookup import require_lookup

MAX_ROUNDS = 10
DISCOVER_SOURCE = "*"  # the discover step spans every source


def resolve(sources: Iterable[DataSource], identities: Identities) -> Identities:
    """The subject's identities across all sources, to a fixpoint.

    A source's answer is its own fixpoint (it links until nothing new turns up), so a
    source is asked again only when other sources added identities to what it last
    returned: with one source, or when no source adds to another's, one round is all.
    """
    sources = list(sources)
    answered: dict[int, Identities] = {}  # source position -> what it last returned
    current = identities
    for _ in range(MAX_ROUNDS):
        found = current
        for at, source in enumerate(sources):
            if answered.get(at) == found:
                continue  # nothing new to it since it answered
            answered[at] = source.resolve(found)
            found = found.union(answered[at])
        if found == current:
            return current
        current = found
    raise UnsupportedError(
        f"the subject's identities were still growing after {MAX_ROUNDS} rounds across "
        "sources; an identity column probably links different people"
    )


def resolve_many(
    sources: Iterable[DataSource], given: Sequence[Identities]
) -> list[Identities | None]:
    """`resolve` for several subjects at once: in each round a source that reads for
    many (`Coalescing`) is asked once for all the subjects with something new to it.
    None for a subject that must be resolved alone (a source could not settle it, or
    it was still growing after `MAX_ROUNDS`: alone, it is refused with the reason)."""
    sources = list(sources)
    answered: list[dict[int, Identities]] = [{} for _ in given]
    current = list(given)
    settled: list[Identities | None] = [None] * len(given)
    active = list(range(len(given)))
    for _ in range(MAX_ROUNDS):
        found = {i: current[i] for i in active}
        for at, source in enumerate(sources):
            asking = [i for i in active if answered[i].get(at) != found[i]]
            for i, answer in zip(asking, _answers(source, [found[i] for i in asking]), strict=True):
                if answer is None:
                    active.remove(i)  # resolved alone
                    continue
                answered[i][at] = answer
                found[i] = found[i].union(answer)
        still = []
        for i in active:
            if found[i] == current[i]:
                settled[i] = current[i]
            else:
                current[i] = found[i]
                still.append(i)
        active = still
        if not active:
            break
    return settled


def _answers(source: DataSource, given: list[Identities]) -> list[Identities | None]:
    if not given:
        return []
    if isinstance(source, Coalescing):
        return source.resolve_many(given)
    return [source.resolve(identities) for identities in given]


def discover(ctx: RunContext, *, store: bool = True) -> Identities:
    """Resolve once per request and keep what was found (sealed, with its pseudonym);
    later attempts read it back instead of resolving again. A dry run stores nothing, so
    each of its attempts resolves again (its step is done all the same).

    `store=False` leaves the storing to the caller, who calls `store_discovered` in the
    transaction that records its result: an export, which changes nothing at its
    sources and is built again whole on a retry, so a run that dies first loses nothing
    by resolving again. Its discover step stays running until then, so no save in
    between can mark it done without the identities it found."""
    step = ctx.steps.start(DISCOVER_SOURCE, Action.DISCOVER)
    if step.done and not ctx.dry_run:
        discovered = load_identities(ctx.db, ctx.keyring, ctx.request_id, discovered_only=True)
        return ctx.identities.union(discovered)
    identities = ctx.prefetched.identities or resolve(ctx.sources, ctx.identities)
    if ctx.dry_run:
        ctx.steps.update(step, counts=_discover_counts(identities, []), done=True)
        ctx.steps.save()
    elif store:
        with ctx.db.session() as session:
            store_discovered(ctx, identities, session)
            ctx.steps.save(session, renew=False)  # renewed by `store_discovered`
    return identities


def store_discovered(ctx: RunContext, identities: Identities, session: Session) -> list[Identity]:
    """Seal and store, in `session`, identities the request does not hold yet, and mark
    the discover step done (saved with the caller's `ctx.steps.save(session,
    renew=False)`: the lease is renewed here); returns the identities added. Call it
    first in the transaction.

    Refused once the request is closed: its identities were wiped, and a stale run
    (released, then finished by another worker) must not seal new ones. The request row
    is locked first (a claimed run's lease renewal, which also proves the claim is still
    its own), so a concurrent completion wipes after this commit, never before it.
    """
    if ctx.steps.claim is None:
        _refuse_closed(session, ctx.request_id)
    ctx.steps.renew(session)  # claimed: LeaseHeldError once closed or taken over
    step = ctx.steps.get(DISCOVER_SOURCE, Action.DISCOVER, session)
    if step.done:  # stored by an earlier run, or earlier in this one
        return []
    key = ctx.keyring.pseudonym_key
    known = _known(ctx, session)
    added = [i for i in identities if (i.type, pseudonym(key, i)) not in known]
    for identity in added:
        session.add(sealed_identity(ctx.keyring, ctx.request_id, identity, discovered=True))
    ctx.steps.update(step, counts=_discover_counts(identities, added), done=True)
    return added


def _known(ctx: RunContext, session: Session) -> set[tuple[str, str]]:
    """The identities the request holds, as (type, pseudonym). A claimed run was given
    them all with its claim (`RunContext.identities`), and nobody adds to them while it
    holds the claim: the only writer is this function, in the transaction of a run
    whose lease renewal proved its claim (a stale one rolls back). Without a claim, they
    are read."""
    if ctx.steps.claim is not None:
        key = ctx.keyring.pseudonym_key
        return {(i.type, pseudonym(key, i)) for i in ctx.identities}
    rows = session.execute(
        select(DsrIdentity.type, DsrIdentity.value_hmac).where(
            DsrIdentity.request_id == ctx.request_id
        )
    )
    return {(str(kind), str(value)) for kind, value in rows}


def _refuse_closed(session: Session, request_id: uuid.UUID) -> None:
    """Lock the request row; refuse when the request is closed (or gone)."""
    status = session.scalar(
        select(DsrRequest.status).where(DsrRequest.id == request_id).with_for_update()
    )
    if status is None or RequestStatus(status) in FINAL:
        raise IllegalTransitionError(
            f"request {request_id} is {status or 'gone'}; its identities were wiped"
            " and are not stored again"
        )


def _discover_counts(identities: Identities, added: Sequence[Identity]) -> dict[str, Any]:
    return {"identities": dict(Counter(i.type for i in identities)), "discovered": len(added)}


# --- plans -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CascadePlan:
    """What an action would touch in every source (counts only)."""

    action: Action
    identity_types: Mapping[str, int]  # how many identities of each type were resolved
    sources: tuple[SourcePlan, ...]

    def __iter__(self) -> Iterator[SourcePlan]:
        return iter(self.sources)

    @property
    def total(self) -> int:
        return sum(p.total for p in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """A PII-free, JSON-ready form (for `--json`, step counts and receipts)."""
        return {
            "action": str(self.action),
            "identities": dict(self.identity_types),
            "total": self.total,
            "sources": [plan_dict(p) for p in self.sources],
        }

    def render(self) -> str:
        """A plain-text table, one line per location."""
        lines = [
            f"{'source':<16} {'location':<32} {'whose':<10} {'action':<10} {'rows':>8}"
            "  legal basis / note"
        ]
        for plan in self.sources:
            if not plan.locations:
                lines.append(f"{plan.source:<16} {'(nothing)':<32}")
            for loc in plan.locations:
                why = "; ".join(x for x in (loc.legal_basis, loc.note) if x)
                lines.append(
                    f"{plan.source:<16} {loc.location:<32} {loc.scope:<10} "
                    f"{loc.disposition:<10} {loc.count:>8}  {why}".rstrip()
                )
        return "\n".join(lines)


_COUNT_KEY = {
    Disposition.DELETE: "deleted",
    Disposition.ANONYMIZE: "anonymized",
    Disposition.RETAIN: "retained",
    Disposition.EXPORT: "exported",
    Disposition.DETACH: "detached",
    Disposition.REPOINT: "repointed",
    Disposition.UNTOUCHED: "untouched",
}


def plan_dict(plan: SourcePlan) -> dict[str, Any]:
    """One source's plan with a count key per location ("deleted": 3) and legal basis."""
    return {
        "source": plan.source,
        "kind": plan.kind,
        "locations": [
            {
                "location": loc.location,
                "disposition": str(loc.disposition),
                _COUNT_KEY[loc.disposition]: loc.count,
                "scope": str(loc.scope),
                **({"legal_basis": loc.legal_basis} if loc.legal_basis else {}),
                **({"note": loc.note} if loc.note else {}),
            }
            for loc in plan.locations
        ],
    }


def plan(sources: Sequence[DataSource], identities: Identities, action: Action) -> CascadePlan:
    """Resolve the identities, then ask every source what `action` would touch.
    Refused when no source can look the subject up by any of the given identity types."""
    require_lookup(sources, identities.types())
    resolved = resolve(sources, identities)
    plans = tuple(source_plan(source, resolved, action) for source in sources)
    return CascadePlan(action, dict(Counter(i.type for i in resolved)), plans)


def source_plan(source: DataSource, identities: Identities, action: Action) -> SourcePlan:
    """`source`'s plan with each location's legal basis as the manifest declares it where
    the connector left it empty: the location's own, else its source's (`art15`)."""
    return with_legal_bases(source.plan(identities, action), location_facts(source))


def verify(sources: Iterable[DataSource], identities: Identities) -> dict[str, list[Residue]]:
    """Residue per source (only sources with some)."""
    found = {}
    for source in sources:
        residue = source.verify(identities)
        if residue:
            found[source.name] = residue
    return found
