"""Checkpoints of the audit chain's head, kept outside the control database.

The chain (`compliance.audit`) proves that no event was changed *unless the whole chain
was rewritten*: someone with write access to the database could recompute every hash. So
once a day (beat, and `gdpr audit checkpoint`) the head (its sequence number, hash and the
number of events) is written to object storage as a small JSON file signed with an HMAC
key derived from the keyring's newest key, which the database never holds. `gdpr audit
verify` checks every checkpoint against the chain: the event it names must be there with
the same hash, and the chain must reach the newest one. A rewritten or cut chain, or a
forged checkpoint, is named.

Files: ``audit-checkpoints/<seq, 12 digits>.json``; the same head twice writes nothing new.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from compliance.db import Database
from compliance.errors import IntegrityError, NotFoundError
from compliance.keyring import Keyring
from compliance.models import AuditEvent
from exporters.objects import ObjectStorage

PREFIX = "audit-checkpoints/"
FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at a moment: PII-free (what an alert may carry too)."""

    seq: int
    hash: str
    events: int
    at: str  # ISO 8601, UTC
    key_id: str

    def summary(self) -> str:
        return f"audit chain head: event {self.seq}, {self.events} events, hash {self.hash[:16]}"


@dataclass(frozen=True)
class Finding:
    """What verification found wrong: a checkpoint's event missing or changed, or a
    checkpoint file that does not verify."""

    seq: int | None
    reason: str


def key_for(seq: int) -> str:
    return f"{PREFIX}{seq:012d}.json"


def head(session: Session) -> tuple[int, str, int] | None:
    """The chain's last event (seq, hash) and how many events it has; None when empty."""
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    if last is None:
        return None
    count = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    return int(last.seq), str(last.hash), int(count)


def write(
    db: Database, storage: ObjectStorage, keyring: Keyring, now: datetime
) -> Checkpoint | None:
    """Checkpoint the head now; None when the chain is empty. Writes nothing when this
    head was checkpointed already (the existing checkpoint is returned)."""
    with db.session() as session:
        found = head(session)
    if found is None:
        return None
    seq, digest, events = found
    key = key_for(seq)
    if storage.exists(key):
        return read(storage, keyring, key)
    point = Checkpoint(seq, digest, events, now.isoformat(), keyring.newest_id)
    storage.upload(key, [_signed(point, keyring)])
    return point


def read(storage: ObjectStorage, keyring: Keyring, key: str) -> Checkpoint:
    """The checkpoint stored at `key`; `IntegrityError` unless its signature verifies."""
    raw = b"".join(storage.download(key))
    try:
        data = json.loads(raw)
        mac = data.pop("mac")
        version = data.pop("format")
        point = Checkpoint(**data)
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"checkpoint {key} is not a checkpoint file; it was modified") from exc
    if version != FORMAT or not hmac.compare_digest(mac, _mac(point, keyring)):
        raise IntegrityError(f"checkpoint {key} does not verify: forged or modified")
    if key != key_for(point.seq):
        raise IntegrityError(f"checkpoint {key} names event {point.seq}: it was moved")
    return point


def verify(session: Session, storage: ObjectStorage, keyring: Keyring) -> Iterator[Finding]:
    """Every way the chain disagrees with the stored checkpoints, oldest first."""
    last = head(session)
    for key in storage.keys(PREFIX):
        try:
            point = read(storage, keyring, key)
        except (IntegrityError, NotFoundError) as exc:
            yield Finding(None, str(exc))
            continue
        found = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == point.seq))
        if found is None:
            reach = "the chain is empty" if last is None else f"the chain ends at {last[0]}"
            yield Finding(point.seq, f"event {point.seq} is missing ({reach}): events were deleted")
        elif found != point.hash:
            yield Finding(
                point.seq, f"event {point.seq} differs from its checkpoint: the chain was rewritten"
            )


def _signed(point: Checkpoint, keyring: Keyring) -> bytes:
    body = {"format": FORMAT, **asdict(point), "mac": _mac(point, keyring)}
    return json.dumps(body, sort_keys=True).encode()


def _mac(point: Checkpoint, keyring: Keyring) -> str:
    canonical = json.dumps(asdict(point), sort_keys=True).encode()
    return hmac.new(_signing_key(keyring, point.key_id), canonical, hashlib.sha256).hexdigest()


def _signing_key(keyring: Keyring, key_id: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gdpr audit checkpoint")
    return hkdf.derive(keyring.key(key_id))
