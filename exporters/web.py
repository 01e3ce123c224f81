"""The download service: a Flask app serving the link a data subject receives by email.

GET /d/<token> shows a landing page with a Download button (mail scanners prefetch GETs,
so a GET never counts as a download); POST /d/<token> streams the decrypted ZIP with its
Content-Length (known from the stored size before decrypting: browsers show progress, and
one cut short counts as failed). Every response carries strict security headers and is
never cached; waitress's own error responses too (`exporters.web_server`). Bad tokens of
every kind (unknown, expired, revoked, used up, malformed) get one identical page, and each
refusal is counted against the client's pseudonym (`compliance.alerts.refusals`). No
exception detail reaches a client, and no token reaches a log line.

Run it with `gdpr serve` (waitress); see `exporters.web_server`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException

from compliance import metrics
from compliance.alerts.refusals import client_pseudonym
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import ComplianceError, RetryableError, TokenError
from compliance.keyring import Keyring
from compliance.logs import stack_summary
from exporters.crypto import wrapper_for
from exporters.links import Verdict
from exporters.ratelimit import SlidingWindowLimiter, client_key
from exporters.storage import ObjectStorage
from exporters.web_download import DownloadService
from exporters.web_server import SECURITY_HEADERS, ServerLimits, redact_tokens_in_logs

log = logging.getLogger("gdpr.web")

TEMPLATES = Path(__file__).resolve().parent.parent / "compliance" / "templates" / "web"
GONE_STATUS = 404  # the same for every kind of bad token


class DownloadApp(Flask):
    """Flask, but an unhandled error is logged by place only: the request path holds a token,
    and an exception's text may hold anything. It carries the server limits from the same
    settings, for `exporters.web_server` to serve it with."""

    server_limits = ServerLimits()

    def log_exception(self, exc_info: Any) -> None:
        exc = exc_info[1] if exc_info else None
        trace = stack_summary(exc) if isinstance(exc, BaseException) else "unknown"
        self.logger.error("web.error", extra={"trace": trace})


def create_app(
    settings: Settings,
    db: Database,
    storage: ObjectStorage,
    keyring: Keyring,
    clock: Callable[[], datetime] = utcnow,
) -> Flask:
    """The download service for one installation."""
    redact_tokens_in_logs()
    app = DownloadApp(
        "gdpr-download",
        template_folder=str(TEMPLATES),
        static_folder=str(TEMPLATES / "static"),
        static_url_path="/static",
    )
    app.config.update(MAX_CONTENT_LENGTH=4096, TEMPLATES_AUTO_RELOAD=False)
    service = DownloadService(settings, db, storage, wrapper_for(settings, keyring), clock)
    limiter = SlidingWindowLimiter(settings.rate_limit_per_minute, 60.0)
    _routes(app, service, limiter, clock, keyring.pseudonym_key)
    _error_pages(app)
    app.after_request(_secure_headers)
    app.server_limits = ServerLimits.from_settings(settings)
    return app


def _routes(
    app: Flask,
    service: DownloadService,
    limiter: SlidingWindowLimiter,
    clock: Callable[[], datetime],
    pseudonym_key: bytes,
) -> None:
    def client() -> str:  # who a refusal counts against: a pseudonym, never the address
        return client_pseudonym(pseudonym_key, client_key(request.remote_addr))

    @app.before_request
    def rate_limit() -> Response | None:
        if not request.path.startswith("/d/"):
            return None
        client = client_key(request.remote_addr)
        now = clock().timestamp()
        if limiter.allow(client, now):
            return None
        log.warning("download.rate_limited")
        metrics.download_refused("rate_limited")
        response = _page("error.html", 429, title="Too many attempts", message=_SLOW_DOWN)
        response.headers["Retry-After"] = str(limiter.retry_after(client, now) or 60)
        return response

    @app.get("/d/<token>")
    def landing(token: str) -> Response:
        verdict = service.judge(token, client())
        if not verdict.live:
            return _gone()
        return _page("landing.html", 200, **_landing_context(verdict))

    @app.post("/d/<token>")
    def download(token: str) -> Response:
        verdict = service.judge(token, client())
        if not verdict.live or verdict.package is None:
            return _gone()
        body = service.open(verdict)
        try:
            service.consume(verdict)
        except TokenError:
            getattr(body.chunks, "close", lambda: None)()
            return _gone()
        day = verdict.package.created_at.date().isoformat()
        response = Response(body.chunks, status=200, mimetype="application/zip")
        response.headers["Content-Length"] = str(body.size)
        response.headers["Content-Disposition"] = (
            f'attachment; filename="personal-data-export-{day}.zip"'
        )
        return response

    @app.get("/healthz")
    def health() -> Response:
        return Response("ok\n", mimetype="text/plain")


def _landing_context(verdict: Verdict) -> dict[str, Any]:
    assert verdict.link is not None and verdict.package is not None
    return {
        "expires_at": verdict.link.expires_at,
        "downloads_left": verdict.link.max_downloads - verdict.link.downloads,
        "created_at": verdict.package.created_at,
    }


_GONE = (
    "This download link is not valid. It may have expired, been used up or replaced by a "
    "newer one. If you asked us for a copy of your data, reply to our email and we will "
    "send you a new link."
)
_SLOW_DOWN = "You have tried too many times in a short while. Please wait a minute and try again."
_BROKEN = (
    "Something went wrong on our side while preparing this page. Please try again later; "
    "if it keeps happening, reply to our email."
)
_UNAVAILABLE = "The download is temporarily unavailable. Please try again in a few minutes."


def _gone() -> Response:
    return _page("error.html", GONE_STATUS, title="Link not valid", message=_GONE)


def _error_pages(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 404:
            return _gone()
        return _page("error.html", code, title=exc.name, message=_BROKEN)

    @app.errorhandler(RetryableError)
    def unavailable(exc: RetryableError) -> Response:
        log.warning("web.unavailable", extra={"error": type(exc).__name__})
        response = _page("error.html", 503, title="Temporarily unavailable", message=_UNAVAILABLE)
        response.headers["Retry-After"] = "120"
        return response

    @app.errorhandler(ComplianceError)
    def failed(exc: ComplianceError) -> Response:
        log.error("web.failed", extra={"error": type(exc).__name__})
        return _page("error.html", 500, title="Something went wrong", message=_BROKEN)

    @app.errorhandler(Exception)
    def crashed(exc: Exception) -> Response:
        log.error("web.crashed", extra={"trace": stack_summary(exc)})  # never its text
        return _page("error.html", 500, title="Something went wrong", message=_BROKEN)


def _page(template: str, status: int, **context: Any) -> Response:
    try:
        html = render_template(template, **context)
    except Exception:  # a broken template must not turn into a traceback either
        log.exception("web.template_failed")
        html = "<!DOCTYPE html><title>Error</title><p>Something went wrong.</p>"
    return Response(html, status=status, mimetype="text/html")


def _secure_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
