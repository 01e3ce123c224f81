"""The download service's work, apart from HTTP: judge a token, stream a package, count it.

Every refused token and every download is audited in the control database (token hash
prefix only). A package is streamed as decrypt_stream over the stored ciphertext, with
its plaintext size, known from the object's size and the header before decrypting, for
the Content-Length.

Nothing reaches the client that did not authenticate, and a download that fails never
looks complete:

- the first two pieces (a piece: what one ~1 MiB storage read decrypts to) are
  decrypted before the response starts, so a broken header or key, a size no package
  can have, or a failure in the first storage read (in a package under 1 MiB: any
  failure) gives a clean error page and keeps the download;
- a failure later raises out of the response iterator, and the server cuts the
  connection short of the announced length;
- each piece is released only once the next one has decrypted, the last only once the
  stream has ended cleanly, so even a failing final segment (which may hold no
  plaintext at all) leaves the response short. A stream that would deliver more or
  fewer bytes than announced fails the same way.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from compliance import audit, metrics
from compliance.alerts import refusals
from compliance.config import Settings
from compliance.db import Database
from compliance.errors import ComplianceError, IntegrityError, TokenError
from exporters import links
from exporters.crypto import KeyWrapper, Plaintext, decrypt_sized
from exporters.links import LinkState, Verdict
from exporters.storage import ObjectStorage

log = logging.getLogger("gdpr.web")

ACTOR = "download-service"
# Decrypted before the response starts: the first piece cannot go out before the next
# one has decrypted (`_exactly`), so both are decrypted while an error page is possible.
PIECES_AHEAD = 2


@dataclass(frozen=True)
class DownloadService:
    settings: Settings
    db: Database
    storage: ObjectStorage
    unwrapper: KeyWrapper
    clock: Callable[[], datetime]

    def judge(self, token: str, client: str | None = None) -> Verdict:
        """The verdict on a presented token; refusals are audited before returning, and
        counted against `client` (a pseudonym, `compliance.alerts.refusals`) if given."""
        now = self.clock()
        with self.db.session() as session:
            verdict = links.inspect(session, token, now)
            if not verdict.live:
                links.record_refusal(session, verdict, now, ACTOR)
                if client is not None:
                    refusals.record(session, client, now)
        if not verdict.live:
            log.info("download.refused", extra={"reason": str(verdict.state)})
            metrics.download_refused(str(verdict.state))
        return verdict

    def open(self, verdict: Verdict) -> Plaintext:
        """The decrypted package and its size; its first two pieces have authenticated."""
        assert verdict.package is not None
        key = verdict.package.object_key
        ciphertext: Iterator[bytes] = iter(())
        try:
            size = self.storage.size(key)
            ciphertext = self.storage.download(key)
            plain = decrypt_sized(ciphertext, self.unwrapper, size)
            ahead = list(itertools.islice(plain.chunks, PIECES_AHEAD))
        except ComplianceError as exc:
            _close(ciphertext)  # the open object, now rather than whenever it is collected
            self.record_failure(verdict, exc)
            raise
        chunks = self._guarded(verdict, plain, ahead, ciphertext)
        return Plaintext(size=plain.size, chunks=chunks)

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
            metrics.download_refused(str(raced.state))
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

    def _guarded(
        self, verdict: Verdict, plain: Plaintext, ahead: list[bytes], ciphertext: Iterator[bytes]
    ) -> Iterator[bytes]:
        try:
            yield from _exactly(plain.size, itertools.chain(ahead, plain.chunks))
        except GeneratorExit:  # the client went away; nothing to report
            raise
        except Exception as exc:
            self.record_failure(verdict, exc)
            raise
        finally:
            _close(plain.chunks)
            _close(ciphertext)  # a stream that failed has not reached the object's end
        log.info("download.finished", extra={"request_id": _request_id(verdict)})


def _exactly(size: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """`pieces`, `size` bytes in all, each released only once the next one exists (the
    last once `pieces` has ended cleanly). A stream that goes past `size` fails before the
    piece that would, one that ends short fails before its last piece."""
    held, sent = b"", 0
    for piece in pieces:
        if not piece:
            continue
        if sent + len(held) + len(piece) > size:
            raise IntegrityError(_NOT_ITS_SIZE)
        if held:
            yield held
            sent += len(held)
        held = piece
    if sent + len(held) != size:
        raise IntegrityError(_NOT_ITS_SIZE)
    if held:
        yield held


_NOT_ITS_SIZE = (
    "the package does not decrypt to the size its stored object announced; it was "
    "replaced or modified in storage: export it again"
)


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _request_id(verdict: Verdict) -> str:
    return str(verdict.link.request_id) if verdict.link else "-"
