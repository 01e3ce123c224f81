"""Who is acting, and whether they may: operator identity, roles and their checks.

On PostgreSQL an operator is their own database login, a member of the group role
``<database>_operators``: the name recorded on requests, approvals and audit events is the
database's ``session_user``, which no client setting can change, and migration 0002's
triggers hold four-eyes, the transitions each role permits and the audit trail's
append-only rule in the database itself. A login that is not an operator (the owner the
workers use, a superuser) is the installation's own *service* login: it may bootstrap the
first admin and run maintenance, and it answers for what it does under its own name.

On the embedded SQLite database (one machine, one user) the operator is the OS login
name; ``--operator`` or ``GDPR_OPERATOR`` name someone else, recorded as *claimed*. Until
an embedded installation registers an operator, everyone holds every role.

Names are compared canonical everywhere: NFKC, trimmed, case-folded (`canonical`).
"""

from __future__ import annotations

import getpass
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from compliance import audit
from compliance.db import Database
from compliance.errors import PermissionDeniedError, ValidationError
from compliance.models import OperatorRole

_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
REFUSED = "operator.refused"


class Role(StrEnum):
    AGENT = "agent"  # submit requests, view them, hand out and revoke links
    APPROVER = "approver"  # approve and reject erasures
    ADMIN = "admin"  # legal holds, keys, retention runs, suppression, operators


@dataclass(frozen=True)
class Operator:
    name: str  # canonical
    claimed: bool = False  # named by --operator / GDPR_OPERATOR (embedded only)
    service: bool = False  # PostgreSQL: the owner or a superuser, not an operator login

    @property
    def recorded(self) -> dict[str, bool]:
        """What audit details say about how this operator was identified."""
        return {"claimed": True} if self.claimed else {}


def canonical(name: str) -> str:
    """`name` as compared everywhere: NFKC, trimmed, case-folded; a `ValidationError`
    unless it is 1-64 of letters, digits, '.', '_', '@', '-' (starting with a letter or
    digit). The offending value is never echoed."""
    folded = _fold(name)
    if not _NAME.fullmatch(folded):
        raise ValidationError(
            "operator name is not valid: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    return folded


def same_operator(first: str, second: str) -> bool:
    """Whether two recorded names are the same operator (compared canonical; names
    recorded before names were canonical included)."""
    return _fold(first) == _fold(second)


def _fold(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip().casefold()


def identify(db: Database, configured: str, claimed: str | None) -> Operator:
    """Who is acting: on PostgreSQL the session's login (`claimed` is refused there);
    on SQLite the OS login, or `claimed` / a `configured` name that differs from it."""
    if db.engine.dialect.name == "postgresql":
        if claimed is not None:
            raise PermissionDeniedError(
                "--operator is refused with a PostgreSQL control database: you act as your"
                " database login; connect with your own login (GDPR_DATABASE_URL)"
            )
        return _session_operator(db)
    login = canonical(_login_name())
    if claimed is not None:
        name = canonical(claimed)
    else:
        name = canonical(configured) if configured else login
    return Operator(name, claimed=name != login)


def _session_operator(db: Database) -> Operator:
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT session_user, gdpr_is_operator_session()")).one()
    return Operator(canonical(str(row[0])), service=not row[1])


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --- roles --------------------------------------------------------------------------------


def roles_of(session: Session, name: str) -> set[Role]:
    found = session.scalars(select(OperatorRole.role).where(OperatorRole.name == name))
    return {Role(role) for role in found}


def _anyone_registered(session: Session) -> bool:
    return session.scalar(select(OperatorRole.name).limit(1)) is not None


def authorize(db: Database, operator: Operator, role: Role, action: str, now: datetime) -> None:
    """Refuse (`PermissionDeniedError`, recorded as an `operator.refused` audit event)
    unless `operator` holds `role`. A service login passes, and so does everyone on an
    embedded installation that registered no operator yet."""
    if operator.service:
        return
    with db.session() as session:
        if role in roles_of(session, operator.name):
            return
        if db.engine.dialect.name != "postgresql" and not _anyone_registered(session):
            return
        details = {"action": action, "needs": role.value, **operator.recorded}
        audit.record(session, actor=operator.name, action=REFUSED, now=now, details=details)
    raise PermissionDeniedError(
        f"{operator.name} may not {action}: that needs the {role} role"
        f" (an admin runs `gdpr operator grant {operator.name} {role}`)"
    )


@dataclass(frozen=True)
class Grant:
    name: str
    roles: tuple[Role, ...]
    granted_by: str
    granted_at: datetime


def list_operators(db: Database) -> list[Grant]:
    with db.session() as session:
        rows = session.scalars(select(OperatorRole).order_by(OperatorRole.name, OperatorRole.role))
        by_name: dict[str, list[OperatorRole]] = {}
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
    return [
        Grant(
            name,
            tuple(Role(r.role) for r in found),
            found[-1].granted_by,
            max(r.granted_at for r in found),
        )
        for name, found in by_name.items()
    ]


def grant(
    db: Database, by: Operator, name: str, roles: Iterable[Role], now: datetime
) -> list[Role]:
    """Give `name` these roles (an admin, or the service login for the first admin);
    returns the roles it did not hold before. Audited as `operator.granted`."""
    target = canonical(name)
    with db.session() as session:
        held = roles_of(session, target)
        added = [role for role in dict.fromkeys(roles) if role not in held]
        for role in added:
            session.add(
                OperatorRole(name=target, role=role.value, granted_by=by.name, granted_at=now)
            )
        if added:
            details = {"operator": target, "roles": [r.value for r in added], **by.recorded}
            audit.record(
                session, actor=by.name, action="operator.granted", now=now, details=details
            )
    return added


def revoke(
    db: Database, by: Operator, name: str, roles: Iterable[Role], now: datetime
) -> list[Role]:
    """Take these roles from `name`; returns those it held. Audited as `operator.revoked`.
    An admin cannot take the last admin role away from the installation."""
    target = canonical(name)
    wanted = list(dict.fromkeys(roles))
    with db.session() as session:
        held = roles_of(session, target)
        removed = [role for role in wanted if role in held]
        if Role.ADMIN in removed and _admins(session) == {target}:
            raise PermissionDeniedError(
                f"{target} is the last admin; grant the admin role to another operator first"
            )
        if removed:
            session.execute(
                delete(OperatorRole).where(
                    OperatorRole.name == target,
                    OperatorRole.role.in_([r.value for r in removed]),
                )
            )
            details = {"operator": target, "roles": [r.value for r in removed], **by.recorded}
            audit.record(
                session, actor=by.name, action="operator.revoked", now=now, details=details
            )
    return removed


def _admins(session: Session) -> set[str]:
    rows = session.scalars(select(OperatorRole.name).where(OperatorRole.role == Role.ADMIN.value))
    return set(rows)


def missing_login_sql(db: Database, name: str) -> str | None:
    """On PostgreSQL, the statements a DBA runs when `name` is no login in the operators'
    group yet (None when it is, and on SQLite)."""
    if db.engine.dialect.name != "postgresql":
        return None
    with db.engine.connect() as conn:
        group = conn.execute(text("SELECT gdpr_operator_group()")).scalar_one()
        member = conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_auth_members m"
                " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member"
                " WHERE g.rolname = :g AND u.rolname = :u)"
            ),
            {"g": group, "u": name},
        ).scalar_one()
        exists = conn.execute(
            text("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :u)"), {"u": name}
        ).scalar_one()
    if member:
        return None
    create = "" if exists else f'CREATE ROLE "{name}" LOGIN; '
    return f'{create}GRANT "{group}" TO "{name}";'
