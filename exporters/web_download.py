"""The download service's work, apart from HTTP: judge a token, stream a package, count it.

Every refused token and every download is audited in the control database (token hash
prefix only). A package is streamed as decrypt_stream over the stored ciphertext; the
first segment is decrypted before any byte is sent, so a broken header or key gives a
clean error page. A failure in a later segment raises out of the response iterator,
which makes the server cut the connection: the client never receives a truncated ZIP
that looks complete (the chunked body never gets its terminating chunk).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from compliance import audit
from compliance.config import Settings
from compliance.db import Database
from compliance.errors import ComplianceError, TokenError
from exporters import links
from exporters.crypto import KeyWrapper, decrypt_stream
from exporters.links import LinkState, Verdict
from exporters.storage import ObjectStorage

log = logging.getLogger("gdpr.web")

ACTOR = "download-service"


@dataclass(frozen=True)
class DownloadService:
    settings: Settings
    db: Database
    storage: ObjectStorage
    unwrapper: KeyWrapper
    clock: Callable[[], datetime]

    def judge(self, token: str) -> Verdict:
        """The verdict on a presented token; refusals are audited before returning."""
        now = self.clock()
        with self.db.session() as session:
            verdict = links.inspect(session, token, now)
            if not verdict.live:
                links.record_refusal(session, verdict, now, ACTOR)
        if not verdict.live:
            log.info("download.refused", extra={"reason": str(verdict.state)})
        return verdict

    def open(self, verdict: Verdict) -> Iterator[bytes]:
        """The decrypted package, its first segment already authenticated."""
        assert verdict.package is not None
        try:
            ciphertext = self.storage.download(verdict.package.object_key)
            plain = decrypt_stream(ciphertext, self.unwrapper)
            first = next(plain, b"")
        except ComplianceError as exc:
            self.record_failure(verdict, exc)
            raise
        return self._guarded(verdict, first, plain)

    def consume(self, verdict: Verdict) -> int:
        """Count the download (atomically); a lost race is refused and audited."""
        assert verdict.link is not None
        now = self.clock()
        try:
            with self.db.session() as session:
                left = links.consume(session, verdict.link, now, ACTOR)
        except TokenError:
            with self.db.session() as session:
                raced = Verdict(LinkState.USED_UP, verdict.token_prefix, verdict.link)
                links.record_refusal(session, raced, now, ACTOR)
            raise
        log.info("download.started", extra={"request_id": str(verdict.link.request_id)})
        return left

    def record_failure(self, verdict: Verdict, exc: BaseException) -> None:
        assert verdict.link is not None
        log.error(
            "download.failed",
            extra={"request_id": str(verdict.link.request_id), "error": type(exc).__name__},
        )
        try:
            with self.db.session() as session:
                audit.record(
                    session,
                    actor=ACTOR,
                    action="link.download_failed",
                    now=self.clock(),
                    request_id=verdict.link.request_id,
                    details={"token": verdict.token_prefix, "error": type(exc).__name__},
                )
        except ComplianceError:
            log.exception("download.failure_not_audited")

    def _guarded(self, verdict: Verdict, first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
        try:
            if first:
                yield first
            yield from rest
        except GeneratorExit:  # the client went away; nothing to report
            raise
        except Exception as exc:
            self.record_failure(verdict, exc)
            raise
        finally:
            close = getattr(rest, "close", None)
            if close is not None:
                close()
        log.info("download.finished", extra={"request_id": _request_id(verdict)})


def _request_id(verdict: Verdict) -> str:
    return str(verdict.link.request_id) if verdict.link else "-"
