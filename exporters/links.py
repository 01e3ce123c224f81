"""Download links: random tokens, stored only as a hash, with expiry and a download limit.

The raw token exists once: `issue_link` returns it for the email and forgets it. The
database keeps its sha256; audit events carry only an 8-hex prefix of that hash. A
refused token (unknown, expired, revoked, used up, malformed, package gone) gets one
vague `TokenError` message so a stranger learns nothing; the precise reason goes to
the audit trail.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from compliance import audit
from compliance.config import Settings
from compliance.errors import NotFoundError, StateError, TokenError, ValidationError
from compliance.models import DownloadLink, DsrRequest, ExportPackage, RequestKind

TOKEN_BYTES = 32  # 256 bits of randomness
MAX_TOKEN_LENGTH = 128
PREFIX_LENGTH = 8
VAGUE = "this download link is not valid; ask us for a new one"
Note = Callable[[str, dict[str, Any]], None]  # takes an audit event to append later
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,128}")
_LINKS = cast(Table, DownloadLink.__table__)
_INSERT_LINK = insert(_LINKS)
_REVOKE_ALL = (
    update(_LINKS)
    .where(_LINKS.c.request_id == bindparam("w_request"), _LINKS.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("p_now", type_=_LINKS.c.revoked_at.type))
    .returning(_LINKS.c.token_hash)
)


class LinkState(StrEnum):
    LIVE = "live"
    UNKNOWN = "unknown"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    REVOKED = "revoked"
    USED_UP = "used_up"
    PACKAGE_GONE = "package_gone"


@dataclass(frozen=True)
class IssuedLink:
    """A link just issued: the raw token (mail it; never store or log it) and its terms."""

    token: str
    expires_at: datetime
    max_downloads: int


@dataclass(frozen=True)
class Verdict:
    """What a presented token is worth right now; `link`/`package` set when known."""

    state: LinkState
    token_prefix: str
    link: DownloadLink | None = None
    package: ExportPackage | None = None

    @property
    def live(self) -> bool:
        return self.state is LinkState.LIVE


def link_url(settings: Settings, token: str) -> str:
    """The address a subject opens: the download service's base URL plus the token."""
    return f"{settings.download_base_url.rstrip('/')}/d/{token}"


def find_link(session: Session, token: str) -> DownloadLink | None:
    if not well_formed(token):
        return None
    return session.scalars(
        select(DownloadLink).where(DownloadLink.token_hash == hash_token(token))
    ).one_or_none()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def well_formed(token: str) -> bool:
    """Cheap shape check before any hashing or database work."""
    return len(token) <= MAX_TOKEN_LENGTH and _TOKEN_SHAPE.fullmatch(token) is not None


def issue_link(
    session: Session,
    request_id: uuid.UUID,
    settings: Settings,
    now: datetime,
    actor: str = "worker",
) -> str:
    """Create a link for the request's live package; return the raw token (only once)."""
    request, package = _exportable(session, request_id, now)
    token = new_token()
    token_hash = hash_token(token)
    link = DownloadLink(
        token_hash=token_hash,
        request_id=request_id,
        created_at=now,
        expires_at=min(now + timedelta(days=settings.link_ttl_days), package.expires_at),
        max_downloads=settings.link_max_downloads,
        downloads=0,
    )
    session.add(link)
    session.flush()
    details = {"token": token_hash[:PREFIX_LENGTH], "max_downloads": link.max_downloads}
    _audit(session, actor, "link.issued", request, now, details)
    return token


def revoke(session: Session, request_id: uuid.UUID, now: datetime, actor: str) -> int:
    """Revoke every unrevoked link of the request; returns how many were revoked."""
    request = _request(session, request_id)
    links = session.scalars(
        select(DownloadLink).where(
            DownloadLink.request_id == request_id, DownloadLink.revoked_at.is_(None)
        )
    ).all()
    for link in links:
        link.revoked_at = now
        details = {"token": link.token_hash[:PREFIX_LENGTH]}
        _audit(session, actor, "link.revoked", request, now, details)
    session.flush()
    return len(links)


def reissue(
    session: Session, request_id: uuid.UUID, settings: Settings, now: datetime, actor: str
) -> str:
    """Revoke the request's links and issue a fresh one; returns the new raw token."""
    return reissue_link(session, request_id, settings, now, actor).token


def reissue_link(
    session: Session, request_id: uuid.UUID, settings: Settings, now: datetime, actor: str
) -> IssuedLink:
    """`reissue`, returning the new link's terms with its token."""
    request, package = _exportable(session, request_id, now)  # refuse before revoking
    return replace_links(
        session, request.id, request.subject, package.expires_at, settings, now, actor
    )


def replace_links(
    session: Session,
    request_id: uuid.UUID,
    subject: str | None,
    package_expires_at: datetime,
    settings: Settings,
    now: datetime,
    actor: str,
    note: Note | None = None,
    new_package: bool = False,
) -> IssuedLink:
    """Revoke the export's unrevoked links and issue a fresh one, for a package the caller
    knows is live (it checked, or recorded it in this transaction): one statement each,
    and the audit events of `revoke` and `issue_link`, appended now or, with `note`,
    handed to it for the caller to append later in the same transaction.

    `new_package`: the package is recorded in this very transaction, so the request has
    no link to revoke (a link is issued only for a recorded package, a request has at
    most one, and package rows are never deleted)."""
    revoked: Sequence[str] = ()
    if not new_package:
        revoked = session.scalars(_REVOKE_ALL, {"w_request": request_id, "p_now": now}).all()
    token = new_token()
    token_hash = hash_token(token)
    expires_at = min(now + timedelta(days=settings.link_ttl_days), package_expires_at)
    row = {
        "token_hash": token_hash,
        "request_id": request_id,
        "created_at": now,
        "expires_at": expires_at,
        "max_downloads": settings.link_max_downloads,
        "downloads": 0,
    }
    session.execute(_INSERT_LINK, row)
    events: list[tuple[str, dict[str, Any]]] = [
        ("link.revoked", {"token": revoked_hash[:PREFIX_LENGTH]}) for revoked_hash in revoked
    ]
    issued = {"token": token_hash[:PREFIX_LENGTH], "max_downloads": settings.link_max_downloads}
    events.append(("link.issued", issued))
    for action, details in events:
        if note is not None:
            note(action, details)
        else:
            _audit_as(session, actor, action, request_id, subject, now, details)
    return IssuedLink(token, expires_at, settings.link_max_downloads)


def inspect(session: Session, token: str, now: datetime) -> Verdict:
    """Judge a presented token without changing anything."""
    if not well_formed(token):
        return Verdict(LinkState.MALFORMED, "")
    prefix = hash_token(token)[:PREFIX_LENGTH]
    link = find_link(session, token)
    if link is None:
        return Verdict(LinkState.UNKNOWN, prefix)
    package = session.scalars(
        select(ExportPackage).where(ExportPackage.request_id == link.request_id)
    ).one_or_none()
    return Verdict(link_state(link, package, now), prefix, link, package)


def link_state(link: DownloadLink, package: ExportPackage | None, now: datetime) -> LinkState:
    if link.revoked_at is not None:
        return LinkState.REVOKED
    if link.expires_at <= now:
        return LinkState.EXPIRED
    if link.downloads >= link.max_downloads:
        return LinkState.USED_UP
    if package is None or package.deleted_at is not None or package.expires_at <= now:
        return LinkState.PACKAGE_GONE
    return LinkState.LIVE


def check(session: Session, token: str, now: datetime) -> DownloadLink:
    """The live link for `token`, or a deliberately vague `TokenError`."""
    verdict = inspect(session, token, now)
    if not verdict.live or verdict.link is None:
        raise TokenError(VAGUE)
    return verdict.link


def consume(session: Session, link: DownloadLink, now: datetime, actor: str) -> int:
    """Count one download atomically; returns the downloads left.

    One conditional UPDATE, so concurrent downloads can never exceed the limit: the
    database row lock (PostgreSQL) or write lock (SQLite) serialises them.
    """
    result = cast(
        CursorResult[Any],
        session.execute(
            update(DownloadLink)
            .where(
                DownloadLink.id == link.id,
                DownloadLink.revoked_at.is_(None),
                DownloadLink.expires_at > now,
                DownloadLink.downloads < DownloadLink.max_downloads,
            )
            .values(downloads=DownloadLink.downloads + 1)
            .execution_options(synchronize_session=False)
        ),
    )
    if result.rowcount != 1:
        raise TokenError(VAGUE)
    downloads = session.scalars(
        select(DownloadLink.downloads).where(DownloadLink.id == link.id)
    ).one()
    request = _request(session, link.request_id)
    details = {"token": link.token_hash[:PREFIX_LENGTH], "download": downloads}
    _audit(session, actor, "link.downloaded", request, now, details)
    return link.max_downloads - downloads


def record_refusal(session: Session, verdict: Verdict, now: datetime, actor: str) -> None:
    """Audit a refused attempt: the reason and hash prefix, never the token."""
    request = _request(session, verdict.link.request_id) if verdict.link else None
    details = {"token": verdict.token_prefix or "-", "reason": str(verdict.state)}
    _audit(session, actor, "link.refused", request, now, details)


def live_links(session: Session, request_id: uuid.UUID, now: datetime) -> list[DownloadLink]:
    links = session.scalars(select(DownloadLink).where(DownloadLink.request_id == request_id)).all()
    return [
        link
        for link in links
        if link.revoked_at is None and link.expires_at > now and link.downloads < link.max_downloads
    ]


def _request(session: Session, request_id: uuid.UUID) -> DsrRequest:
    request = session.get(DsrRequest, request_id)
    if request is None:
        raise NotFoundError(f"request {request_id} does not exist; check the id")
    return request


def _exportable(
    session: Session, request_id: uuid.UUID, now: datetime
) -> tuple[DsrRequest, ExportPackage]:
    request = _request(session, request_id)
    if request.kind != RequestKind.EXPORT:
        raise ValidationError(  # never has a link, in any state: the id is the wrong one
            f"request {request_id} is an {request.kind}; only an export has download links"
        )
    package = session.scalars(
        select(ExportPackage).where(ExportPackage.request_id == request_id)
    ).one_or_none()
    if package is None:
        raise StateError(f"request {request_id} has no export package yet; run it first")
    if package.deleted_at is not None or package.expires_at <= now:
        raise StateError(
            f"the package of request {request_id} has expired; submit a new export request"
        )
    return request, package


def _audit_as(
    session: Session,
    actor: str,
    action: str,
    request_id: uuid.UUID,
    subject: str | None,
    now: datetime,
    details: dict[str, Any],
) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        now=now,
        request_id=request_id,
        subject=subject,
        details=details,
    )


def _audit(
    session: Session,
    actor: str,
    action: str,
    request: DsrRequest | None,
    now: datetime,
    details: dict[str, Any],
) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        now=now,
        request_id=request.id if request else None,
        subject=request.subject if request else None,
        details=details,
    )
