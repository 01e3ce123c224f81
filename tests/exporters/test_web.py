from __future__ import annotations

import http.client
import io
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from compliance.db import utcnow
from compliance.models import AuditEvent, DownloadLink
from exporters import links
from exporters.crypto import SEGMENT_SIZE, TAG_BYTES
from exporters.web import create_app
from exporters.web_server import start_in_thread
from tests.conftest import DownloadSite

SECURE = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def call(
    url: str, method: str = "GET", path: str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        body = b"" if method == "POST" else None
        conn.request(
            method, path if path is not None else parts.path, body=body, headers=headers or {}
        )
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def events(site: DownloadSite, action: str) -> list[AuditEvent]:
    with site.db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def downloads(site: DownloadSite) -> int:
    with site.db.session() as session:
        return session.scalars(
            select(DownloadLink.downloads).where(DownloadLink.request_id == site.request_id)
        ).one()


def assert_secure(reply: Reply) -> None:
    for name, value in SECURE.items():
        assert reply.headers.get(name) == value, name
    assert "default-src 'self'" in reply.headers["Content-Security-Policy"]


def test_get_shows_a_landing_page_and_never_counts_a_download(download_site: DownloadSite) -> None:
    for _ in range(5):  # a mail scanner prefetching the link, repeatedly
        reply = call(download_site.url)
        assert reply.status == 200
    assert '<form method="post">' in reply.text and ">Download</button>" in reply.text
    assert_secure(reply)
    assert downloads(download_site) == 0
    assert events(download_site, "link.downloaded") == []


def test_post_streams_the_decrypted_zip_with_a_dated_filename_and_its_length(
    download_site: DownloadSite,
) -> None:
    reply = call(download_site.url, "POST")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/zip"
    day = utcnow().date().isoformat()
    assert reply.headers["Content-Disposition"] == (
        f'attachment; filename="personal-data-export-{day}.zip"'
    )
    assert reply.headers["Content-Length"] == str(len(download_site.zip_bytes))
    assert "Transfer-Encoding" not in reply.headers
    assert_secure(reply)
    assert reply.body == download_site.zip_bytes
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(reply.body)).read("manifest.json"))
    assert {f["path"] for f in manifest["files"]} >= {"index.html", "data/app/users.json"}
    assert downloads(download_site) == 1
    (event,) = events(download_site, "link.downloaded")
    assert event.details == {"token": links.hash_token(download_site.token)[:8], "download": 1}


def test_a_range_request_gets_the_whole_package(download_site: DownloadSite) -> None:
    reply = call(download_site.url, "POST", headers={"Range": "bytes=100-199"})
    assert reply.status == 200 and "Accept-Ranges" not in reply.headers
    assert reply.body == download_site.zip_bytes


def test_the_download_limit_holds_over_http(download_site: DownloadSite) -> None:
    limit = download_site.settings.link_max_downloads
    statuses = [call(download_site.url, "POST").status for _ in range(limit + 1)]
    assert statuses == [200] * limit + [404]
    assert call(download_site.url).status == 404


def _bad_tokens(site: DownloadSite) -> Iterator[tuple[str, str]]:
    yield "unknown", links.new_token()
    yield "malformed", "not-a-token"
    yield "huge", "A" * 60_000
    yield "odd characters", "%00%0d%0a" + "A" * 40
    expired_id, revoked_id, used_id = (_another_request(site) for _ in range(3))
    with site.db.session() as session:
        expired = links.issue_link(
            session, expired_id, site.settings, utcnow() - timedelta(days=30)
        )
        revoked = links.issue_link(session, revoked_id, site.settings, utcnow())
        links.revoke(session, revoked_id, utcnow(), actor="bob")
        used = links.issue_link(session, used_id, site.settings, utcnow())
        session.scalars(
            select(DownloadLink).where(DownloadLink.request_id == used_id)
        ).one().downloads = 99
    yield "expired", expired
    yield "revoked", revoked
    yield "used up", used


def _another_request(site: DownloadSite) -> Any:
    import uuid

    from compliance.models import DsrRequest, ExportPackage

    now = utcnow() - timedelta(days=40)
    request_id = uuid.uuid4()
    with site.db.session() as session:
        session.add(
            DsrRequest(
                id=request_id,
                kind="export",
                status="completed",
                subject="ps_x",
                submitted_by="a",
                submitted_at=now,
                due_at=now,
                updated_at=now,
            )
        )
        session.flush()
        session.add(
            ExportPackage(
                request_id=request_id,
                object_key="exports/none",
                size=0,
                sha256="0" * 64,
                key_id="k",
                created_at=now,
                expires_at=now + timedelta(days=90),
            )
        )
    return request_id


def test_every_bad_token_gets_the_same_page_and_status_and_is_audited(
    download_site: DownloadSite,
) -> None:
    pages = {}
    for name, token in _bad_tokens(download_site):
        for method in ("GET", "POST"):
            reply = call(download_site.server.url, method, f"/d/{token}")  # type: ignore[attr-defined]
            assert reply.status == 404, name
            assert_secure(reply)
            pages[(name, method)] = reply.text
    assert len(set(pages.values())) == 1
    assert "This download link is not valid" in next(iter(pages.values()))
    reasons = {e.details["reason"] for e in events(download_site, "link.refused")}
    assert reasons == {"unknown", "malformed", "expired", "revoked", "used_up"}
    for event in events(download_site, "link.refused"):
        assert len(event.details["token"]) in (1, 8)


LARGE = 3 * 1024 * 1024  # three storage reads: streamed past the pieces checked up front


def stream_short(url: str) -> tuple[int, bytes]:
    """POST the link over a socket and read to the end: (Content-Length, bytes received),
    expecting the connection to end before the announced length."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=b"")
        response = conn.getresponse()
        assert response.status == 200  # headers were already on the wire
        assert response.getheader("Transfer-Encoding") is None
        announced = int(response.getheader("Content-Length") or -1)
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
    finally:
        conn.close()
    return announced, caught.value.partial


def flip(position: int) -> Any:
    return lambda c: c[:position] + bytes([c[position] ^ 1]) + c[position + 1 :]


def test_a_mid_stream_decryption_failure_cuts_the_connection(
    download_site: DownloadSite, caplog: pytest.LogCaptureFixture
) -> None:
    site = download_site
    assert site.request_id is not None
    plain = os.urandom(LARGE)
    site.store(site.request_id, plain, mangle=flip(LARGE - 300_000))
    with caplog.at_level(logging.INFO):
        announced, received = stream_short(site.url)
    assert announced == LARGE
    assert 0 < len(received) < LARGE - 300_000
    assert received == plain[: len(received)]  # only what authenticated
    assert "Exception while serving /d/<token>" in caplog.text
    assert site.token not in caplog.text
    (failed,) = events(site, "link.download_failed")
    assert failed.details["error"] == "IntegrityError"


@pytest.mark.parametrize("size", [LARGE, LARGE + 1000], ids=["empty-final", "final-with-data"])
def test_a_tampered_last_segment_leaves_the_response_short_of_its_length(
    download_site: DownloadSite, size: int
) -> None:
    site = download_site
    assert site.request_id is not None
    plain = os.urandom(size)
    site.store(site.request_id, plain, mangle=lambda c: c[:-1] + bytes([c[-1] ^ 1]))
    announced, received = stream_short(site.url)
    assert announced == size
    assert len(received) < size
    assert received == plain[: len(received)]
    (failed,) = events(site, "link.download_failed")
    assert failed.details["error"] == "IntegrityError"


@pytest.mark.parametrize("misstated", [SEGMENT_SIZE + TAG_BYTES, -(SEGMENT_SIZE + TAG_BYTES)])
def test_a_package_that_is_not_the_size_its_storage_states_never_arrives_whole(
    download_site: DownloadSite, misstated: int
) -> None:
    site = download_site
    assert site.request_id is not None
    plain = os.urandom(LARGE)
    site.store(site.request_id, plain)
    storage = MisstatedSize(site.storage, misstated)
    server = start_in_thread(create_app(site.settings, site.db, storage, site.keyring))  # type: ignore[arg-type]
    try:
        announced, received = stream_short(f"{server.url}/d/{site.token}")
    finally:
        server.stop()
    assert announced == LARGE + misstated // (SEGMENT_SIZE + TAG_BYTES) * SEGMENT_SIZE
    assert len(received) < min(announced, LARGE)
    (failed,) = events(site, "link.download_failed")
    assert failed.details["error"] == "IntegrityError"


class MisstatedSize:
    """The real storage, but `size` is off by `delta` bytes (an object replaced between
    its size and its body)."""

    def __init__(self, storage: Any, delta: int) -> None:
        self.storage, self.delta = storage, delta

    def size(self, key: str) -> int:
        return int(self.storage.size(key)) + self.delta

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


@pytest.mark.parametrize(
    "mangle",
    [
        # Drop the final segment: what remains ends exactly on a full-segment boundary.
        lambda c: c[: len(c) - (len(c) % (SEGMENT_SIZE + TAG_BYTES) or SEGMENT_SIZE + TAG_BYTES)],
        lambda c: c[:-1] + bytes([c[-1] ^ 1]),  # the final segment's tag
        lambda c: c[: len(c) // 2] + bytes([c[len(c) // 2] ^ 1]) + c[len(c) // 2 + 1 :],
    ],
    ids=["truncated", "last-segment", "middle"],
)
def test_a_broken_small_package_gets_an_error_page_and_keeps_its_download(
    download_site: DownloadSite, mangle: Any
) -> None:
    site = download_site
    assert site.request_id is not None
    site.store(site.request_id, site.zip_bytes, mangle=mangle)  # fits in the pieces checked first
    reply = call(site.url, "POST")
    assert reply.status == 500 and "Something went wrong on our side" in reply.text
    assert_secure(reply)
    assert downloads(site) == 0
    (failed,) = events(site, "link.download_failed")
    assert failed.details["error"] == "IntegrityError"


def test_a_large_package_failing_in_its_first_storage_read_gets_an_error_page(
    download_site: DownloadSite,
) -> None:
    site = download_site
    assert site.request_id is not None
    site.store(site.request_id, os.urandom(LARGE), mangle=flip(500_000))  # of the first 1 MiB
    reply = call(site.url, "POST")
    assert reply.status == 500 and "Something went wrong on our side" in reply.text
    assert downloads(site) == 0


def test_a_head_request_shows_the_landing_headers_and_never_counts_a_download(
    download_site: DownloadSite,
) -> None:
    reply = call(download_site.url, "HEAD")
    assert reply.status == 200 and reply.body == b""
    assert reply.headers["Content-Type"].startswith("text/html")
    assert_secure(reply)
    assert downloads(download_site) == 0


def test_a_package_that_fails_at_once_gets_an_error_page_and_keeps_its_download(
    download_site: DownloadSite,
) -> None:
    site = download_site
    assert site.request_id is not None
    site.store(
        site.request_id, site.zip_bytes, mangle=lambda c: c[:40] + bytes([c[40] ^ 1]) + c[41:]
    )
    reply = call(site.url, "POST")
    assert reply.status == 500
    assert_secure(reply)
    assert "Traceback" not in reply.text and "IntegrityError" not in reply.text
    assert "Something went wrong on our side" in reply.text
    assert downloads(site) == 0


def test_an_unexpected_exception_renders_a_plain_page_without_a_trace(
    download_site: DownloadSite, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail at /srv/app.py line 12")

    monkeypatch.setattr(links, "inspect", explode)
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="gdpr"):
        reply = call(download_site.url)
    assert reply.status == 500
    assert_secure(reply)
    assert "secret internal detail" not in reply.text and "Traceback" not in reply.text
    logged = caplog.text + " ".join(str(vars(record)) for record in caplog.records)
    assert download_site.token not in logged
    assert "secret internal detail" not in logged  # exception text may hold anything
    assert "RuntimeError at test_web.py" in logged  # but where it failed is logged


def test_unknown_paths_and_methods_get_plain_pages_with_secure_headers(
    download_site: DownloadSite,
) -> None:
    server_url = download_site.server.url  # type: ignore[attr-defined]
    missing = call(server_url, "GET", "/nope")
    assert missing.status == 404 and "<!DOCTYPE html>" in missing.text
    assert_secure(missing)
    wrong = call(server_url, "DELETE", f"/d/{download_site.token}")
    assert wrong.status == 405 and "Traceback" not in wrong.text
    assert_secure(wrong)
    css = call(server_url, "GET", "/static/style.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert_secure(css)


def test_each_client_is_rate_limited_with_a_readable_page(download_site: DownloadSite) -> None:
    site = download_site
    app = create_app(
        site.settings.with_overrides(rate_limit_per_minute=3),
        site.db,
        site.storage,  # type: ignore[arg-type]
        site.keyring,  # type: ignore[arg-type]
    )
    server = start_in_thread(app)
    try:
        statuses = [call(f"{server.url}/d/{site.token}").status for _ in range(5)]
        limited = call(f"{server.url}/d/{site.token}", "POST")
    finally:
        server.stop()
    assert statuses == [200, 200, 200, 429, 429]
    assert limited.status == 429 and "Too many attempts" in limited.text
    assert int(limited.headers["Retry-After"]) > 0
    assert_secure(limited)
    assert downloads(site) == 0


def test_logs_never_hold_the_token(
    download_site: DownloadSite, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="gdpr"):
        call(download_site.url)
        call(download_site.url, "POST")
        call(download_site.server.url, "GET", f"/d/{links.new_token()}")  # type: ignore[attr-defined]
    assert "download.started" in caplog.text  # the service did log
    assert download_site.token not in caplog.text
    for event in events(download_site, "link.downloaded"):
        assert download_site.token not in json.dumps(event.details)


def test_gdpr_serve_runs_the_download_app_on_the_configured_address(
    download_site: DownloadSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner
    from flask import Flask

    from compliance.cli.context import App
    from compliance.cli.main import cli
    from exporters import web_server

    served: list[tuple[Any, str, int, int]] = []
    proxies: list[str] = []
    start = web_server.start_in_thread

    def stopped_at_once(
        app: Any, host: str, port: int, *, trusted_proxy: str, threads: int
    ) -> web_server.BackgroundServer:
        served.append((app, host, port, threads))
        proxies.append(trusted_proxy)
        server = start(app, "127.0.0.1", 0, trusted_proxy=trusted_proxy, threads=threads)
        server.stop()  # its thread has ended: the command returns instead of serving on
        return server

    monkeypatch.setattr(web_server, "start_in_thread", stopped_at_once)
    app = App()
    settings = download_site.settings.with_overrides(
        serve_host="127.0.0.2", serve_port=8123, trusted_proxy="127.0.0.9"
    )
    app._cache.update(settings=settings, db=download_site.db)
    app.close = lambda: None  # type: ignore[method-assign]
    result = CliRunner().invoke(cli, ["serve", "--threads", "3"], obj=app)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("gdpr download service listening on http://127.0.0.1:")
    ((flask_app, host, port, threads),) = served
    assert isinstance(flask_app, Flask) and (host, port, threads) == ("127.0.0.2", 8123, 3)
    assert proxies == ["127.0.0.9"]
    assert flask_app.test_client().get(f"/d/{download_site.token}").status_code == 200


def test_a_missing_stored_package_gets_an_error_page_and_keeps_its_download(
    download_site: DownloadSite,
) -> None:
    site = download_site
    site.storage.delete(f"exports/{site.request_id}.zip.enc")  # type: ignore[attr-defined]
    reply = call(site.url, "POST")
    assert reply.status == 500 and "Something went wrong on our side" in reply.text
    assert_secure(reply)
    assert downloads(site) == 0
    (failed,) = events(site, "link.download_failed")
    assert failed.details["error"] == "NotFoundError"


@pytest.mark.s3
def test_a_package_in_s3_streams_decrypted_through_the_service(
    download_site: DownloadSite, s3_endpoint: str, s3_bucket: str
) -> None:
    from exporters.storage import open_storage

    site = download_site
    settings = site.settings.with_overrides(
        storage_url=f"s3://{s3_bucket}/gdpr", s3_endpoint_url=s3_endpoint
    )
    s3 = DownloadSite(settings, site.db, open_storage(settings), site.keyring)
    assert site.request_id is not None
    s3.store(site.request_id, site.zip_bytes)
    server = start_in_thread(create_app(settings, site.db, s3.storage, site.keyring))  # type: ignore[arg-type]
    try:
        reply = call(f"{server.url}/d/{site.token}", "POST")
    finally:
        server.stop()
    assert reply.status == 200 and reply.body == site.zip_bytes


def test_rotating_ipv6_addresses_within_one_network_does_not_escape_the_rate_limit(
    download_site: DownloadSite,
) -> None:
    site = download_site
    app = create_app(
        site.settings.with_overrides(rate_limit_per_minute=3),
        site.db,
        site.storage,  # type: ignore[arg-type]
        site.keyring,  # type: ignore[arg-type]
    )
    client = app.test_client()
    statuses = [
        client.get(
            f"/d/{site.token}", environ_base={"REMOTE_ADDR": f"2001:db8:1:2::{n:x}"}
        ).status_code
        for n in range(1, 6)
    ]
    elsewhere = client.get(f"/d/{site.token}", environ_base={"REMOTE_ADDR": "2001:db8:9:9::1"})
    ipv4 = client.get(f"/d/{site.token}", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert statuses == [200, 200, 200, 429, 429]
    assert elsewhere.status_code == 200 and ipv4.status_code == 200


@pytest.mark.parametrize(
    ("proxy", "expected"), [("", [200, 200, 429, 429]), ("127.0.0.1", [200, 200, 200, 200])]
)
def test_forwarded_for_counts_only_behind_the_configured_proxy(
    download_site: DownloadSite, proxy: str, expected: list[int]
) -> None:
    site = download_site
    app = create_app(
        site.settings.with_overrides(rate_limit_per_minute=2),
        site.db,
        site.storage,  # type: ignore[arg-type]
        site.keyring,  # type: ignore[arg-type]
    )
    server = start_in_thread(app, trusted_proxy=proxy)
    try:
        url = f"{server.url}/d/{site.token}"
        clients = [{"X-Forwarded-For": f"203.0.113.{n}"} for n in range(4)]
        statuses = [call(url, headers=client).status for client in clients]
    finally:
        server.stop()
    # Without a trusted proxy the header is ignored: the four look like one client.
    assert statuses == expected
