"""A request's identities at rest: values sealed under the keyring and bound to their
request and type, beside their HMAC pseudonym. Values are wiped at a final state; the
pseudonym stays for lookups and audit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from compliance.db import Database
from compliance.identities import Identities, Identity, pseudonym
from compliance.keyring import Keyring
from compliance.models import DsrIdentity


def identity_aad(request_id: uuid.UUID, identity_type: str) -> bytes:
    """Associated data binding a sealed identity to its request and type."""
    return f"{request_id}:{identity_type}".encode()


def sealed_identity(
    keyring: Keyring, request_id: uuid.UUID, identity: Identity, *, discovered: bool
) -> DsrIdentity:
    """The row that keeps `identity` for a request: sealed value and pseudonym."""
    return DsrIdentity(
        request_id=request_id,
        type=identity.type,
        value_sealed=keyring.seal(identity.value.encode(), identity_aad(request_id, identity.type)),
        value_hmac=pseudonym(keyring.pseudonym_key, identity),
        discovered=discovered,
    )


def load_identities(
    db: Database, keyring: Keyring, request_id: uuid.UUID, *, discovered_only: bool = False
) -> Identities:
    """The request's identities still held (given and discovered, or discovered only)."""
    with db.session() as session:
        return identities_in(session, keyring, request_id, discovered_only=discovered_only)


def identities_in(
    session: Session, keyring: Keyring, request_id: uuid.UUID, *, discovered_only: bool = False
) -> Identities:
    """`load_identities` inside an open transaction."""
    query = select(DsrIdentity.type, DsrIdentity.value_sealed).where(
        DsrIdentity.request_id == request_id, DsrIdentity.value_sealed.is_not(None)
    )
    if discovered_only:
        query = query.where(DsrIdentity.discovered.is_(True))
    rows = session.execute(query).all()
    return Identities.of(
        _opened(keyring, request_id, kind, sealed) for kind, sealed in rows if sealed is not None
    )


def identities_of(
    session: Session, keyring: Keyring, request_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Identities]:
    """`identities_in` of several requests in one statement, by request."""
    sealed: dict[uuid.UUID, list[Identity]] = {request_id: [] for request_id in request_ids}
    if request_ids:
        query = select(DsrIdentity.request_id, DsrIdentity.type, DsrIdentity.value_sealed).where(
            DsrIdentity.request_id.in_(list(request_ids)), DsrIdentity.value_sealed.is_not(None)
        )
        for request_id, kind, value in session.execute(query):
            if value is not None:
                sealed[request_id].append(_opened(keyring, request_id, kind, value))
    return {request_id: Identities.of(found) for request_id, found in sealed.items()}


def _opened(keyring: Keyring, request_id: uuid.UUID, kind: str, sealed: bytes) -> Identity:
    """A stored identity's value, unsealed under the request it belongs to."""
    return Identity(kind, keyring.unseal(sealed, identity_aad(request_id, kind)).decode())


def wipe_identities(session: Session, request_id: uuid.UUID) -> None:
    """Erase raw identity values of a request; only their HMAC pseudonyms remain."""
    session.execute(
        update(DsrIdentity).where(DsrIdentity.request_id == request_id).values(value_sealed=None)
    )
