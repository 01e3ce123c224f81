"""Checkpoints of the audit chain outside the database.

The chain's hashes show an edit, but not a rewrite of the whole chain with every hash
recomputed, nor events cut from its end: both leave a chain that verifies. So the head
(its seq, hash, the number of events and its time) is written, daily and on demand, as a
signed file to object storage (``audit-checkpoints/<time>-<seq>.json``). The signature is
an HMAC under a key derived (HKDF) from the keyring's newest key with its own label, and
the file names that key's id: someone with only database access can neither forge a
checkpoint nor move one.

`verify` walks the chain once, as `audit.verify_chain` does, and checks every checkpoint
on the way: its event must exist with the same hash and the same number of events up to
it, and the chain must reach the newest one. A file whose signature does not verify is
reported as tampered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from compliance import audit
from compliance.alerts.channels import Channel
from compliance.errors import ChannelUnavailableError, IntegrityError
from compliance.keyring import KEY_BYTES, Keyring
from compliance.models import AuditEvent

log = logging.getLogger("gdpr.audit")

PREFIX = "audit-checkpoints/"
FORMAT = 1
_LABEL = b"gdpr audit checkpoint v1"
_MAX_BYTES = 64 * 1024


class CheckpointStorage(Protocol):
    """What checkpoints need of object storage (`exporters.storage.open_storage`)."""

    def upload(self, key: str, chunks: Iterable[bytes]) -> int: ...

    def download(self, key: str) -> Iterator[bytes]: ...

    def keys(self, prefix: str) -> Iterator[str]: ...


@dataclass(frozen=True)
class Checkpoint:
    """The chain's head at one moment, as signed into a file."""

    seq: int
    hash: str
    events: int  # events in the chain up to and including `seq`
    at: str  # the head event's time (ISO)
    written_at: str  # when the checkpoint was written (ISO)
    key_id: str  # the keyring key its signing key is derived from
    signature: str = ""

    @property
    def key(self) -> str:
        stamp = datetime.fromisoformat(self.written_at).strftime("%Y-%m-%dT%H%MZ")
        return f"{PREFIX}{stamp}-{self.seq:012d}.json"

    def signed_fields(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["signature"]
        return {"format": FORMAT, **fields}


@dataclass(frozen=True)
class Written:
    checkpoint: Checkpoint
    created: bool  # False: the newest checkpoint already records this head


@dataclass(frozen=True)
class Problem:
    key: str  # the checkpoint file
    seq: int | None  # the event it concerns (None: the file itself is unreadable)
    reason: str


@dataclass(frozen=True)
class Verdict:
    chain: audit.ChainReport
    checkpoints: int  # checkpoints read (good or not)
    newest: int | None  # seq of the newest good checkpoint
    problems: tuple[Problem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems

    @property
    def first_bad(self) -> int | None:
        """The first broken or missing event, by seq."""
        seqs = [p.seq for p in self.problems if p.seq is not None]
        if self.chain.broken_at is not None:
            seqs.append(self.chain.broken_at)
        return min(seqs, default=None)


def summary(checkpoint: Checkpoint) -> dict[str, Any]:
    """A PII-free summary of a checkpoint, fit for a log line or an alert channel."""
    return {
        "key": checkpoint.key,
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "events": checkpoint.events,
        "at": checkpoint.at,
        "written_at": checkpoint.written_at,
        "key_id": checkpoint.key_id,
    }


# --- writing ----------------------------------------------------------------------------


def head(session: Session, keyring: Keyring, now: datetime) -> Checkpoint | None:
    """A signed checkpoint of the chain's head now; None while the chain is empty."""
    last = session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
    if last is None:
        return None
    count = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    unsigned = Checkpoint(
        seq=last.seq,
        hash=last.hash,
        events=int(count),
        at=last.at.astimezone(UTC).isoformat(),
        written_at=now.astimezone(UTC).isoformat(),
        key_id=keyring.newest_id,
    )
    return sign(unsigned, keyring)


def write(
    session: Session, storage: CheckpointStorage, keyring: Keyring, now: datetime
) -> Written | None:
    """Write a checkpoint of the head unless the newest one already records it (then
    nothing is written); None while the chain is empty."""
    current = head(session, keyring, now)
    if current is None:
        return None
    newest = _newest(storage, keyring)
    if newest is not None and (newest.seq, newest.hash) == (current.seq, current.hash):
        return Written(newest, created=False)
    storage.upload(current.key, [encode(current)])
    log.info("dsr.audit.checkpointed", extra=summary(current))
    return Written(current, created=True)


def _newest(storage: CheckpointStorage, keyring: Keyring) -> Checkpoint | None:
    """The last checkpoint written (names sort by time), if it verifies."""
    key = max(storage.keys(PREFIX), default=None)
    if key is None:
        return None
    try:
        return decode(key, _read(storage, key), keyring)
    except IntegrityError:
        return None  # a bad newest file: write a good one after it


# --- signing and files ------------------------------------------------------------------


def signing_key(keyring: Keyring, key_id: str) -> bytes:
    """The checkpoint signing key derived from keyring key `key_id` (`IntegrityError` if
    the keyring no longer has it)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_LABEL)
    return hkdf.derive(keyring.key(key_id))


def _mac(checkpoint: Checkpoint, key: bytes) -> str:
    canonical = json.dumps(checkpoint.signed_fields(), sort_keys=True, separators=(",", ":"))
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def sign(checkpoint: Checkpoint, keyring: Keyring) -> Checkpoint:
    key = signing_key(keyring, checkpoint.key_id)
    return Checkpoint(**{**asdict(checkpoint), "signature": _mac(checkpoint, key)})


def encode(checkpoint: Checkpoint) -> bytes:
    body = {**checkpoint.signed_fields(), "signature": checkpoint.signature}
    return (json.dumps(body, sort_keys=True, indent=2) + "\n").encode()


def decode(key: str, body: bytes, keyring: Keyring) -> Checkpoint:
    """The checkpoint in file `key`; `IntegrityError` if it is malformed or its signature
    does not verify."""
    try:
        data = json.loads(body)
        data.pop("format")
        checkpoint = Checkpoint(**data)
        named = checkpoint.key  # its time must parse, too
        valid = isinstance(checkpoint.seq, int) and isinstance(checkpoint.signature, str)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise IntegrityError(f"audit checkpoint '{key}' is malformed") from None
    if not valid:
        raise IntegrityError(f"audit checkpoint '{key}' is malformed")
    expected = _mac(checkpoint, signing_key(keyring, checkpoint.key_id))
    if not hmac.compare_digest(expected, checkpoint.signature):
        raise IntegrityError(f"audit checkpoint '{key}' is tampered: its signature does not verify")
    if named != key:
        raise IntegrityError(
            f"audit checkpoint '{key}' is misplaced: its content is that of '{named}'"
        )
    return checkpoint


def load(storage: CheckpointStorage, keyring: Keyring) -> tuple[list[Checkpoint], list[Problem]]:
    """Every checkpoint in storage: those that verify, and a problem for each that does not."""
    good: list[Checkpoint] = []
    bad: list[Problem] = []
    for key in sorted(storage.keys(PREFIX)):
        body = _read(storage, key)
        try:
            good.append(decode(key, body, keyring))
        except IntegrityError as exc:
            bad.append(Problem(key, None, str(exc)))
    return good, bad


def _read(storage: CheckpointStorage, key: str) -> bytes:
    body = b""
    for chunk in storage.download(key):
        body += chunk
        if len(body) > _MAX_BYTES:
            break
    return body


# --- verifying --------------------------------------------------------------------------


def verify(session: Session, storage: CheckpointStorage, keyring: Keyring) -> Verdict:
    """Walk the chain once: its links (as `audit.verify_chain`) and every checkpoint."""
    good, unreadable = load(storage, keyring)
    pending: dict[int, list[Checkpoint]] = {}
    for checkpoint in good:
        pending.setdefault(checkpoint.seq, []).append(checkpoint)
    walk = _Walk(pending)
    for event in audit.iter_events(session):
        walk.step(event)
    newest = max((c.seq for c in good), default=None)
    problems = (*unreadable, *walk.unmet())
    return Verdict(walk.report(), len(good) + len(unreadable), newest, problems)


class _Walk:
    """The state of one pass along the chain."""

    def __init__(self, pending: dict[int, list[Checkpoint]]) -> None:
        self.pending = pending
        self.found: list[Problem] = []
        self.prev = audit.GENESIS
        self.count = 0
        self.last: int | None = None
        self.broken: audit.ChainReport | None = None

    def step(self, event: AuditEvent) -> None:
        problem = audit.link_problem(event, self.prev)
        if problem and self.broken is None:
            self.broken = audit.ChainReport(self.count, event.seq, problem)
        self.prev, self.last = event.hash, event.seq
        self.count += 1
        for checkpoint in self.pending.pop(event.seq, []):
            self.found += _against(checkpoint, event, self.count)

    def report(self) -> audit.ChainReport:
        return self.broken or audit.ChainReport(self.count, None)

    def unmet(self) -> list[Problem]:
        """Checkpointed events the walk never met: deleted, or cut from the chain's end."""
        unmet = [c for same in self.pending.values() for c in same]
        return self.found + [_missing(c, self.last) for c in _by_seq(unmet)]


def _against(checkpoint: Checkpoint, event: AuditEvent, count: int) -> list[Problem]:
    if event.hash != checkpoint.hash:
        reason = (
            f"its hash differs from checkpoint '{checkpoint.key}': the chain was rewritten"
            " at or before this event"
        )
        return [Problem(checkpoint.key, event.seq, reason)]
    if count != checkpoint.events:
        reason = (
            f"{checkpoint.events} events up to it in checkpoint '{checkpoint.key}', {count}"
            " in the chain: events before it were deleted or added"
        )
        return [Problem(checkpoint.key, event.seq, reason)]
    return []


def _missing(checkpoint: Checkpoint, last: int | None) -> Problem:
    if last is None or checkpoint.seq > last:
        ends = "the chain is empty" if last is None else f"the chain ends at event {last}"
        ends += " (events were cut from its end)"
        reason = f"missing: checkpoint '{checkpoint.key}' records it, but {ends}"
    else:
        reason = f"missing: checkpoint '{checkpoint.key}' records it, but it was deleted"
    return Problem(checkpoint.key, checkpoint.seq, reason)


def _by_seq(checkpoints: Iterable[Checkpoint]) -> Sequence[Checkpoint]:
    return sorted(checkpoints, key=lambda c: c.seq)


def announce(checkpoint: Checkpoint, channels: Sequence[Channel], now: datetime) -> list[str]:
    """Post a new checkpoint's head to the alert channels too: a second copy outside the
    database and the bucket. Returns the names of the channels that failed (logged; the
    stored checkpoint stands without them)."""
    title = f"audit checkpoint: event {checkpoint.seq}"
    body = (
        f"The audit chain held {checkpoint.events} events; its head is event {checkpoint.seq}"
        f" with hash {checkpoint.hash} (key id {checkpoint.key_id}). Keep this message:"
        " `gdpr audit verify` checks the chain against the stored copy."
    )
    failed = []
    for channel in channels:
        try:
            channel.send(title, body, now)
        except ChannelUnavailableError as exc:
            log.warning("dsr.audit.checkpoint.not_announced", extra={"reason": str(exc)})
            failed.append(channel.name)
    return failed
