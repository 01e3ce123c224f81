"""A small retrying HTTP client on the standard library, for third-party API connectors.

Retries 429, 5xx and connection errors with exponential backoff and full jitter,
honouring ``Retry-After`` (seconds or an HTTP date), every wait capped; then gives up with
`SourceUnavailableError`. Any other status is returned to the caller, who knows what a
404 means for its operation. Redirects are not followed (they would carry the auth header
to another address). Errors name the source and the request's template, never the
URL with a subject's value in it, and never the auth secret.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.error import HTTPError, URLError

from compliance.db import utcnow
from compliance.errors import SourceRefusedError, SourceUnavailableError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
USER_AGENT = "gdpr-connector/1"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_backoff: float = 30.0  # cap on any single wait, Retry-After included
    timeout: float = 10.0  # per request (connect and each read)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""


@dataclass(frozen=True)
class Client:
    """Sends requests for one source; `sleep`, `clock` and `jitter` are injectable."""

    source: str
    policy: RetryPolicy = RetryPolicy()
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # holds the secret
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], datetime] = utcnow
    jitter: Callable[[], float] = random.random

    def send(self, method: str, url: str, label: str, body: bytes | None = None) -> Response:
        """One logical request; `label` (``GET /subjects/{email}``) names it in errors."""
        where = f"sources.{self.source}: {label}"
        for attempt in range(1, self.policy.max_attempts + 1):
            response, wait, cause = self._attempt(method, url, body, where)
            if response is not None:
                return response
            if attempt == self.policy.max_attempts:
                raise SourceUnavailableError(
                    f"{where} failed {attempt} times ({cause}); retry later"
                )
            delay = wait if wait is not None else self._backoff(attempt)
            log.warning(
                "source.http.retry",
                extra={"source": self.source, "cause": cause, "attempt": attempt, "delay": delay},
            )
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(
        self, method: str, url: str, body: bytes | None, where: str
    ) -> tuple[Response | None, float | None, str]:
        """(response, None, "") on an answer to keep; (None, wait or None, cause) to retry."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self.headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with _OPENER.open(request, timeout=self.policy.timeout) as answer:
                return Response(answer.status, _read(answer, where)), None, ""
        except HTTPError as exc:
            with exc:
                status = exc.code
                if 300 <= status < 400:
                    raise SourceRefusedError(
                        f"{where} answered a redirect ({status}); set base_url to the final "
                        "address (redirects are not followed: they would carry the secret)"
                    ) from exc
                if status == 429 or status >= 500:
                    return None, self._retry_after(exc.headers.get("Retry-After")), str(status)
                return Response(status, _read(exc, where)), None, ""
        except (URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            return None, None, type(getattr(exc, "reason", exc)).__name__

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.max_backoff, self.policy.backoff * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + self.jitter() / 2)  # half fixed, half jitter

    def _retry_after(self, value: str | None) -> float | None:
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                seconds = (parsedate_to_datetime(value) - self.clock()).total_seconds()
            except (TypeError, ValueError):
                return None
        return max(0.0, min(seconds, self.policy.max_backoff))


def _read(answer: http.client.HTTPResponse | HTTPError, where: str) -> bytes:
    data = answer.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise SourceRefusedError(f"{where} answered more than {MAX_BODY_BYTES} bytes; page it")
    return bytes(data)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())
