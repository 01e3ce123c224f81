"""The download service records each refused token by client pseudonym (never the address),
and a client refused often enough raises the alert, over real sockets."""

from __future__ import annotations

import http.client
import secrets
from urllib.parse import urlsplit

from sqlalchemy import select

from compliance.alerts.check import AlertContext, check
from compliance.alerts.refusals import client_pseudonym
from compliance.db import utcnow
from compliance.models import AuditEvent, TokenRefusal
from tests.conftest import DownloadSite


def _get(site: DownloadSite, token: str) -> int:
    parts = urlsplit(site.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", f"/d/{token}")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_refused_tokens_are_counted_per_client_pseudonym_and_raise_the_alert(
    download_site: DownloadSite,
) -> None:
    settings = download_site.settings.with_overrides(alert_token_refusals=20)
    for _ in range(20):
        assert _get(download_site, secrets.token_urlsafe(32)) == 404
    assert _get(download_site, download_site.token) == 200  # a live link is no refusal
    expected = client_pseudonym(download_site.keyring.pseudonym_key, "127.0.0.1")  # type: ignore[attr-defined]
    with download_site.db.session() as session:  # type: ignore[attr-defined]
        clients = list(session.scalars(select(TokenRefusal.client)))
        refused = session.scalars(select(AuditEvent).where(AuditEvent.action == "link.refused"))
        assert len(list(refused)) == 20
    assert clients == [expected] * 20 and "127.0.0.1" not in expected

    ctx = AlertContext(settings, download_site.db, [], utcnow())  # type: ignore[arg-type]
    raised = check(ctx).raised
    assert [n.key for n in raised] == [f"download_refusals:{expected}"]
    assert raised[0].title == f"client {expected} had 20 download tokens refused in 15 minutes"
