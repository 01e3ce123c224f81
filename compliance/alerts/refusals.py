"""Refused download tokens, by client: recorded durably and PII-free, counted cheaply.

The download service adds one `token_refusal` row (client pseudonym, time) per refused
token, in the transaction that audits the refusal. A client is known only by
`client_pseudonym`: an HMAC of its rate-limit key (an IPv4 address or an IPv6 /64) under the
pseudonym key, so the table holds no address. The alerts count rows per client in a
window and prune rows older than `KEEP`.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from compliance.models import TokenRefusal

PREFIX = "cl_"
KEEP = timedelta(days=1)  # refusals older than this are pruned by the alerts check


def client_pseudonym(key: bytes, client: str) -> str:
    """``cl_`` + 96 bits of HMAC-SHA256 of the client's rate-limit key."""
    digest = hmac.new(key, b"download-client\x00" + client.encode(), hashlib.sha256)
    return PREFIX + digest.hexdigest()[:24]


def record(session: Session, client: str, now: datetime) -> None:
    """One refused token of `client` (a pseudonym), inside the caller's transaction."""
    session.add(TokenRefusal(client=client, at=now))


def busy_clients(session: Session, since: datetime, at_least: int) -> dict[str, int]:
    """Clients with at least `at_least` refusals since `since`: pseudonym -> count."""
    count = func.count(TokenRefusal.id)
    rows = session.execute(
        select(TokenRefusal.client, count)
        .where(TokenRefusal.at >= since)
        .group_by(TokenRefusal.client)
        .having(count >= at_least)
    ).all()
    return {client: int(n) for client, n in rows}


def prune(session: Session, now: datetime) -> int:
    """Delete refusals older than `KEEP`; returns how many."""
    result = session.execute(delete(TokenRefusal).where(TokenRefusal.at < now - KEEP))
    return int(getattr(result, "rowcount", 0) or 0)
