"""Key rotation: what each key protects (`key_status`), and moving it all to the newest
key of the keyring (`rotate`), so an old key can leave GDPR_KEYS.

What the keyring protects:

- identity values, ``dsr_identity.value_sealed`` (`Keyring.seal`, bound to request and
  type: `compliance.sealed`); wiped when a request reaches a final state;
- retention cursors, ``retention_part.cursor_sealed`` (`Keyring.seal`, bound to run and
  part: `compliance.retention.runs`);
- export packages: the data key is wrapped in the package header in object storage
  (exporters/FORMAT.md); the control database keeps its key id (``export_package.key_id``),
  which `exporters.job` writes and a rotation keeps equal to the header's. Packages whose
  key id starts with ``kms:`` are AWS KMS's to rotate, and are only counted here.

A rotation works in batches of `batch` rows (one transaction each; a package is one
download and one upload), and picks only what another key protects, so a run that was
stopped is simply run again: nothing is sealed or wrapped twice and nothing is lost. Each
value is replaced by a conditional UPDATE on the old value, so a concurrent change (an
identity wiped, a sweep saving its cursor) wins. Re-wrapping a package needs object
storage, so it is injected (`PackageRewrap`, in production `exporters.rewrap`): compliance
does not import exporters. Packages expiring within `EXPIRY_MARGIN` are left to the expiry
sweep. On PostgreSQL one rotation runs at a time (a session advisory lock). Every run that
ran leaves one audit event, ``keys.rotated``, with counts and key ids only.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import ColumnElement, LargeBinary, and_, func, select, text, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from compliance import audit
from compliance.db import Database
from compliance.errors import ComplianceError, IntegrityError, StateError
from compliance.keyring import Keyring, sealed_key_id, sealed_prefix
from compliance.models import DsrIdentity, ExportPackage, RetentionPart
from compliance.retention.runs import seal_cursor, unseal_cursor
from compliance.sealed import identity_aad

log = logging.getLogger("gdpr.rotation")

BATCH = 100
EXPIRY_MARGIN = timedelta(hours=1)  # a package expiring sooner is the expiry sweep's
KMS_PREFIX = "kms:"  # key ids of KMS-wrapped packages (exporters.kms.PREFIX)
ACTION = "keys.rotated"
_LOCK_KEY = 0x6764_706B  # "gdpk": PostgreSQL advisory lock, one rotation at a time
_HEAD = 65  # a sealed value's length byte and the longest key id

Progress = Callable[[str, Mapping[str, int]], None]  # (what, counts so far), after a batch


class PackageOutcome(StrEnum):
    """What re-wrapping one package did."""

    REWRAPPED = "rewrapped"
    RECONCILED = "reconciled"  # already re-wrapped by a run that stopped: row brought up to date
    MISSING = "missing"  # no object in storage
    GONE = "deleted_meanwhile"  # expired or erased while it was re-wrapped
    CHANGED = "changed_meanwhile"  # another rotation recorded it first


@dataclass(frozen=True)
class PackageRef:
    """A stored package to re-wrap, as the control database records it."""

    id: int
    request_id: uuid.UUID
    object_key: str
    key_id: str
    expires_at: datetime


class PackageRewrap(Protocol):
    """Re-wraps a stored package's data key under the newest key and records it."""

    def rewrap(self, package: PackageRef) -> PackageOutcome: ...


@dataclass(frozen=True)
class KeyUse:
    """What one key id protects."""

    key_id: str
    in_keyring: bool
    newest: bool
    primary: bool  # wraps new packages
    packages: int = 0
    identities: int = 0
    cursors: int = 0

    @property
    def protected(self) -> int:
        return self.packages + self.identities + self.cursors

    @property
    def removable(self) -> bool:
        """An old keyring key that protects nothing: it can leave GDPR_KEYS."""
        return self.in_keyring and not self.newest and not self.primary and not self.protected

    def to_dict(self) -> dict[str, Any]:
        names = ("key_id", "in_keyring", "newest", "primary", "packages", "identities")
        return {
            **{name: getattr(self, name) for name in names},
            "cursors": self.cursors,
            "removable": self.removable,
        }


@dataclass(frozen=True)
class KeyStatus:
    keys: tuple[KeyUse, ...]
    development: bool

    @property
    def missing(self) -> tuple[KeyUse, ...]:
        """Key ids protecting something that neither the keyring nor KMS can open."""
        return tuple(
            k
            for k in self.keys
            if not k.in_keyring and not k.key_id.startswith(KMS_PREFIX) and k.protected
        )

    def to_dict(self) -> dict[str, Any]:
        return {"development": self.development, "keys": [k.to_dict() for k in self.keys]}


@dataclass(frozen=True)
class RotationReport:
    """What a rotation did (or, dry, would do): counts by name, all under `key_id`."""

    key_id: str
    dry_run: bool
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(self.counts.get(n, 0) for n in ("identities", "cursors", "packages"))

    @property
    def unreadable(self) -> int:
        return sum(v for k, v in self.counts.items() if k.endswith("_unreadable"))

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "dry_run": self.dry_run, "counts": dict(self.counts)}


# --- status ---------------------------------------------------------------------------------


def key_status(db: Database, keyring: Keyring, *, primary_id: str) -> KeyStatus:
    """Every key id in the keyring or in the data, newest last among the keyring's, with
    what it protects. `primary_id` is the key id new packages are wrapped with."""
    with db.session() as session:
        packages = _package_counts(session)
        identities = _sealed_counts(session, DsrIdentity.value_sealed, keyring)
        cursors = _sealed_counts(session, RetentionPart.cursor_sealed, keyring)
    found = sorted((set(packages) | set(identities) | set(cursors)) - set(keyring.keys))
    uses = tuple(
        KeyUse(
            key_id=kid,
            in_keyring=kid in keyring.keys,
            newest=kid == keyring.newest_id,
            primary=kid == primary_id,
            packages=packages[kid],
            identities=identities[kid],
            cursors=cursors[kid],
        )
        for kid in [*keyring.keys, *found]
    )
    if primary_id not in {u.key_id for u in uses}:
        uses += (KeyUse(primary_id, in_keyring=False, newest=False, primary=True),)
    return KeyStatus(uses, keyring.development)


def _package_counts(session: Session) -> Counter[str]:
    rows = session.execute(
        select(ExportPackage.key_id, func.count())
        .where(ExportPackage.deleted_at.is_(None))
        .group_by(ExportPackage.key_id)
    ).all()
    return Counter({kid: int(n) for kid, n in rows})


def _sealed_counts(
    session: Session, column: InstrumentedAttribute[bytes | None], keyring: Keyring
) -> Counter[str]:
    """Sealed values by key id: counted in SQL for the keyring's keys (by prefix), read
    for the others (which should be none)."""
    counts: Counter[str] = Counter()
    for kid in keyring.keys:
        counts[kid] = _count(session, _sealed_with(column, kid))
    others = and_(column.is_not(None), *(~_sealed_with(column, kid) for kid in keyring.keys))
    for head in session.scalars(select(_head(column, _HEAD)).where(others)):
        counts[_key_id_or_unknown(head)] += 1
    return counts


def _head(column: InstrumentedAttribute[bytes | None], length: int) -> ColumnElement[bytes]:
    return func.substr(column, 1, length, type_=LargeBinary)


def _sealed_with(column: InstrumentedAttribute[bytes | None], key_id: str) -> ColumnElement[bool]:
    prefix = sealed_prefix(key_id)
    return and_(column.is_not(None), _head(column, len(prefix)) == prefix)


def _key_id_or_unknown(head: bytes | None) -> str:
    try:
        return sealed_key_id(head or b"")
    except IntegrityError:
        return "(unreadable)"


# --- rotation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sealed:
    """A column of sealed values and how one of its rows is sealed again."""

    name: str
    model: Any
    column: InstrumentedAttribute[bytes | None]
    reseal: Callable[[Keyring, Any], bytes]


def _reseal_identity(keyring: Keyring, row: DsrIdentity) -> bytes:
    assert row.value_sealed is not None
    return keyring.reseal(row.value_sealed, identity_aad(row.request_id, row.type))


def _reseal_cursor(keyring: Keyring, row: RetentionPart) -> bytes:
    return seal_cursor(keyring, row.run_id, row.part, unseal_cursor(keyring, row))


SEALED = (
    _Sealed("identities", DsrIdentity, DsrIdentity.value_sealed, _reseal_identity),
    _Sealed("cursors", RetentionPart, RetentionPart.cursor_sealed, _reseal_cursor),
)


def rotate(
    db: Database,
    keyring: Keyring,
    packages: PackageRewrap,
    *,
    actor: str,
    clock: Callable[[], datetime],
    batch: int = BATCH,
    dry_run: bool = False,
    progress: Progress | None = None,
    expiry_margin: timedelta = EXPIRY_MARGIN,
) -> RotationReport:
    """Seal again every identity and cursor, and re-wrap every package, that another key
    protects, under `keyring.newest_id`. A dry run counts what would change."""
    if dry_run:
        return _plan(db, keyring, clock(), expiry_margin)
    tally: Counter[str] = Counter()
    notify = progress or (lambda _what, _counts: None)
    with _exclusive(db):
        try:
            for sealed in SEALED:
                _reseal_all(db, keyring, sealed, batch, tally, notify)
            _rewrap_all(db, keyring.newest_id, packages, batch, tally, notify, clock, expiry_margin)
        except BaseException:
            _audit_run(db, actor, clock(), keyring.newest_id, tally, batch, finished=False)
            raise
        _audit_run(db, actor, clock(), keyring.newest_id, tally, batch, finished=True)
    return RotationReport(keyring.newest_id, False, dict(tally))


def _reseal_all(
    db: Database,
    keyring: Keyring,
    sealed: _Sealed,
    batch: int,
    tally: Counter[str],
    notify: Progress,
) -> None:
    ident = sealed.model.id
    after = 0
    while True:
        with db.session() as session:
            rows = list(
                session.scalars(
                    select(sealed.model)
                    .where(ident > after, _not_newest(sealed.column, keyring.newest_id))
                    .order_by(ident)
                    .limit(batch)
                )
            )
            for row in rows:
                _reseal_row(session, keyring, sealed, row, tally)
        if not rows:
            return
        after = rows[-1].id
        notify(sealed.name, tally)


def _reseal_row(
    session: Session, keyring: Keyring, sealed: _Sealed, row: Any, tally: Counter[str]
) -> None:
    old = getattr(row, sealed.column.key)
    try:
        new = sealed.reseal(keyring, row)
    except IntegrityError:
        tally[f"{sealed.name}_unreadable"] += 1  # a key no longer in the keyring, or tampered
        log.warning("keys.rotate.unreadable", extra={"what": sealed.name, "row": row.id})
        return
    result = session.execute(
        update(sealed.model)
        .where(sealed.model.id == row.id, sealed.column == old)
        .values({sealed.column.key: new})
        .execution_options(synchronize_session=False)
    )
    done = int(getattr(result, "rowcount", 0))
    tally[sealed.name if done else f"{sealed.name}_changed_meanwhile"] += 1


def _not_newest(column: InstrumentedAttribute[bytes | None], newest: str) -> ColumnElement[bool]:
    return and_(column.is_not(None), ~_sealed_with(column, newest))


def _rewrap_all(
    db: Database,
    newest: str,
    packages: PackageRewrap,
    batch: int,
    tally: Counter[str],
    notify: Progress,
    clock: Callable[[], datetime],
    margin: timedelta,
) -> None:
    after = 0
    while refs := _packages_after(db, newest, after, batch):
        for ref in refs:
            _rewrap_one(packages, ref, tally, clock() + margin)
        after = refs[-1].id
        notify("packages", tally)


def _rewrap_one(
    packages: PackageRewrap, ref: PackageRef, tally: Counter[str], soon: datetime
) -> None:
    if ref.expires_at <= soon:
        tally["packages_expiring"] += 1
        return
    try:
        outcome = packages.rewrap(ref)
    except IntegrityError:
        tally["packages_unreadable"] += 1
        log.warning("keys.rotate.unreadable", extra={"what": "package", "row": ref.id})
        return
    if outcome in (PackageOutcome.REWRAPPED, PackageOutcome.RECONCILED):
        tally["packages"] += 1
    if outcome is not PackageOutcome.REWRAPPED:
        tally[f"packages_{outcome.value}"] += 1


def _packages_after(db: Database, newest: str, after: int, batch: int) -> list[PackageRef]:
    with db.session() as session:
        rows = session.execute(
            select(
                ExportPackage.id,
                ExportPackage.request_id,
                ExportPackage.object_key,
                ExportPackage.key_id,
                ExportPackage.expires_at,
            )
            .where(ExportPackage.id > after, _package_to_rewrap(newest))
            .order_by(ExportPackage.id)
            .limit(batch)
        ).all()
    return [PackageRef(r.id, r.request_id, r.object_key, r.key_id, r.expires_at) for r in rows]


def _package_to_rewrap(newest: str) -> ColumnElement[bool]:
    return and_(
        ExportPackage.deleted_at.is_(None),
        ExportPackage.key_id != newest,
        ~ExportPackage.key_id.startswith(KMS_PREFIX, autoescape=True),
    )


def _plan(db: Database, keyring: Keyring, now: datetime, margin: timedelta) -> RotationReport:
    newest = keyring.newest_id
    to_rewrap = _package_to_rewrap(newest)
    soon = ExportPackage.expires_at <= now + margin
    with db.session() as session:
        counts = {s.name: _count(session, _not_newest(s.column, newest)) for s in SEALED}
        counts["packages"] = _count(session, and_(to_rewrap, ~soon))
        counts["packages_expiring"] = _count(session, and_(to_rewrap, soon))
    return RotationReport(newest, True, counts)


def _count(session: Session, where: ColumnElement[bool]) -> int:
    return int(session.scalar(select(func.count()).where(where)) or 0)


def _audit_run(
    db: Database,
    actor: str,
    now: datetime,
    key_id: str,
    tally: Mapping[str, int],
    batch: int,
    *,
    finished: bool,
) -> None:
    """One event per run (counts and key ids only). A run stopped by an error records
    what it did before the error is raised; if even that fails, the error that stopped it
    matters more."""
    details = {"key_id": key_id, "finished": finished, "batch": batch, **tally}
    try:
        with db.session() as session:
            audit.record(session, actor=actor, action=ACTION, now=now, details=details)
    except ComplianceError:
        if finished:
            raise
        log.exception("keys.rotate.not_audited")
    log.info("keys.rotated", extra=details)


@contextmanager
def _exclusive(db: Database) -> Iterator[None]:
    """One rotation at a time on PostgreSQL (a session advisory lock), so two runs never
    re-wrap the same package at once."""
    if db.engine.dialect.name != "postgresql":
        yield
        return
    with db.engine.connect() as conn:
        taken = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar()
        conn.commit()  # the lock belongs to the session, not to this transaction
        if not taken:
            raise StateError("another `gdpr keys rotate` is running; wait for it, then run again")
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
