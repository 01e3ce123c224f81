"""Step-up for destructive actions: one-time codes (TOTP, RFC 6238) for enrolled operators.

An operator who enrolled (`gdpr operator enroll`) must add ``--otp CODE`` to approving or
rejecting an erasure and to every admin action. A code is good for its 30-second step and
one step either side, and never twice. Five wrong codes within 15 minutes lock the operator
out of such actions for `Settings.otp_lockout_minutes` (default 15); every wrong code is an
`operator.otp.failed` audit event and a lockout an `operator.locked` one (alerts count
them). The secret is sealed with the keyring, bound to the operator's name.

The code is checked by the CLI: it protects against a borrowed terminal or a leaked
password. An operator who bypasses the CLI is still bound by their roles and four-eyes,
which the database enforces (migration 0002).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from sqlalchemy import delete

from compliance import audit
from compliance.db import Database
from compliance.errors import NotFoundError, PermissionDeniedError, ValidationError
from compliance.keyring import Keyring
from compliance.models import OperatorOtp
from compliance.operators import Operator

ISSUER = "gdpr"
MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
FAILED = "operator.otp.failed"
LOCKED = "operator.locked"
ENROLLED = "operator.otp.enrolled"
REMOVED = "operator.otp.removed"


@dataclass(frozen=True)
class Enrollment:
    name: str
    secret: str  # base32, shown once
    uri: str  # otpauth:// provisioning URI for an authenticator app


def begin(name: str, issuer: str = ISSUER) -> Enrollment:
    """A new secret for `name`; nothing is stored until `confirm` sees a code from it."""
    secret = pyotp.random_base32()
    return Enrollment(
        name, secret, pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=issuer)
    )


def confirm(
    db: Database,
    keyring: Keyring,
    operator: Operator,
    enrollment: Enrollment,
    code: str,
    now: datetime,
) -> None:
    """Store the enrollment once `code` proves the authenticator app holds the secret
    (a `ValidationError` otherwise, and nothing changes). Enrolling again replaces it."""
    step = _matching_step(pyotp.TOTP(enrollment.secret), _code(code), now, after=0)
    if step is None:
        raise ValidationError("that code does not match the new secret; enroll again and scan it")
    sealed = keyring.seal(enrollment.secret.encode(), _aad(operator.name))
    with db.session() as session:
        session.execute(delete(OperatorOtp).where(OperatorOtp.name == operator.name))
        session.add(
            OperatorOtp(
                name=operator.name,
                secret_sealed=sealed,
                enrolled_at=now,
                last_step=step,
                failures=0,
            )
        )
        audit.record(
            session,
            actor=operator.name,
            action="operator.otp.enrolled",
            now=now,
            details=operator.recorded,
        )


def unenroll(db: Database, by: Operator, name: str, now: datetime) -> None:
    """Forget `name`'s enrollment (a lost phone), which also ends a lockout. Admins only."""
    with db.session() as session:
        gone = session.execute(delete(OperatorOtp).where(OperatorOtp.name == name))
        if not getattr(gone, "rowcount", 0):
            raise NotFoundError(f"{name} has not enrolled a one-time code")
        details = {"operator": name, **by.recorded}
        audit.record(
            session, actor=by.name, action="operator.otp.removed", now=now, details=details
        )


def step_up(
    db: Database,
    keyring: Keyring,
    operator: Operator,
    code: str | None,
    action: str,
    now: datetime,
    lockout: timedelta = FAILURE_WINDOW,
) -> None:
    """Pass when `operator` has not enrolled, or `code` is a fresh good code; else
    `PermissionDeniedError` (a wrong code counted, audited, and after five a lockout)."""
    with db.session() as session:
        row = session.get(OperatorOtp, operator.name, with_for_update=True)
        if row is None:
            return
        if row.locked_until is not None and row.locked_until > now:
            raise PermissionDeniedError(
                f"{operator.name} is locked out of {action} until {row.locked_until:%H:%M} UTC"
                f" after {MAX_FAILURES} wrong one-time codes; wait, or ask an admin"
                " (`gdpr operator unenroll`)"
            )
        if not code:
            raise PermissionDeniedError(
                f"{operator.name} enrolled a one-time code: add --otp CODE (from the"
                f" authenticator app) to {action}"
            )
        secret = keyring.unseal(row.secret_sealed, _aad(operator.name)).decode()
        step = _matching_step(pyotp.TOTP(secret), _code(code), now, after=row.last_step)
        if step is not None:
            row.last_step, row.failures, row.window_started_at = step, 0, None
            return
        failures = _count_failure(row, now)
        details = {"action": action, "failures": failures, **operator.recorded}
        audit.record(session, actor=operator.name, action=FAILED, now=now, details=details)
        if failures >= MAX_FAILURES:
            row.locked_until = now + lockout
            audit.record(session, actor=operator.name, action=LOCKED, now=now, details=details)
    raise PermissionDeniedError(
        f"wrong or already used one-time code for {operator.name}"
        f" ({failures} of {MAX_FAILURES} before a lockout)"
    )


def _count_failure(row: OperatorOtp, now: datetime) -> int:
    if row.window_started_at is None or now - row.window_started_at > FAILURE_WINDOW:
        row.window_started_at, row.failures = now, 0
    row.failures += 1
    return row.failures


def _matching_step(totp: pyotp.TOTP, code: str, now: datetime, *, after: int) -> int | None:
    """The time step (this one, or one either side) whose code is `code`, if later than
    `after` (a code is never accepted twice)."""
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if step > after and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _code(code: str) -> str:
    cleaned = code.replace(" ", "")
    if not (cleaned.isdigit() and len(cleaned) == 6):
        raise ValidationError("a one-time code is 6 digits, from the authenticator app")
    return cleaned


def _aad(name: str) -> bytes:
    return b"operator-otp|" + name.encode()
