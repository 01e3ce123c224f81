"""Re-wrap a stored package's data key under the keyring's newest key (`gdpr keys rotate`).

The wrapped data key lives only in the package header, in object storage (the control
database keeps its key id, ``export_package.key_id``), and the header is the associated
data of every segment (exporters/FORMAT.md): a new header needs new segment tags. So the
package is rewritten as a whole, with the **same data key** and without ever forming its
plaintext:

- the old header tag and every old segment tag are checked first (a tampered package is
  refused, never laundered into one that verifies);
- each segment moves to a fresh nonce prefix: new ciphertext = old ciphertext XOR the old
  keystream XOR the new one (AES-CTR under the data key, as GCM counts), so no nonce is
  ever used twice with the data key;
- its tag is computed over the new header and ciphertext (GHASH through AES-GCM itself:
  `_Gcm.tag`), and the header gets a new header tag.

The result is exactly what `encrypt_stream` would have written for the same plaintext,
data key and nonce prefix, under the new key id. The upload replaces the object
atomically; a run that stops half-way leaves the old object, or the new one with the old
row (the next run sees the new key id in the header and only brings the row up to date:
`PackageRewrapper`). A multipart upload cut short is on no record: the maintenance sweep
aborts it as unrecorded after an hour (`exporters.uploads`), the bucket's lifecycle rule
as a backstop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import update

from compliance.db import Database
from compliance.errors import IntegrityError, NotFoundError
from compliance.models import ExportPackage
from compliance.rotation import PackageOutcome, PackageRef
from exporters.crypto import (
    PREFIX_BYTES,
    TAG_BYTES,
    Header,
    KeyWrapper,
    build_header,
    read_header,
)
from exporters.storage import ObjectStorage

log = logging.getLogger("gdpr.exporters.rewrap")

_BLOCK = 16


def rewrap_stream(
    chunks: Iterable[bytes], unwrapper: KeyWrapper, wrapper: KeyWrapper
) -> Iterator[bytes]:
    """The encrypted package `chunks`, its data key wrapped by `wrapper` instead: yields
    the new header, then each segment once its old tag verified. `IntegrityError` if the
    package was tampered with or truncated (nothing after the failing segment is yielded)."""
    source = iter(chunks)
    old, rest = _take_header(source)
    data_key = unwrapper.unwrap(old.key_id, old.wrapped_key)
    gcm = _Gcm(data_key)
    rest = _fill(source, rest, TAG_BYTES)
    gcm.check(_header_nonce(old.nonce_prefix), old.raw, b"", bytes(rest[:TAG_BYTES]), "header")
    prefix = os.urandom(PREFIX_BYTES)
    raw = build_header(wrapper.key_id, wrapper.wrap(data_key), prefix, old.segment_size)
    yield raw + AESGCM(data_key).encrypt(_header_nonce(prefix), b"", raw)
    after_tag = bytes(rest[TAG_BYTES:])
    for counter, segment, last in _segments(source, after_tag, old.segment_size + TAG_BYTES):
        ciphertext, tag = segment[:-TAG_BYTES], segment[-TAG_BYTES:]
        before = _nonce(old.nonce_prefix, counter, last)
        gcm.check(before, old.raw, ciphertext, tag, f"segment {counter}")
        after = _nonce(prefix, counter, last)
        moved = gcm.move(ciphertext, before, after)
        yield moved + gcm.tag(after, raw, moved)


def peek_header(chunks: Iterable[bytes]) -> tuple[Header, Iterator[bytes]]:
    """The header of an encrypted package, and the whole stream (header included) still
    to be read."""
    source = iter(chunks)
    header, rest = _take_header(source)
    return header, _chain(bytes(header.raw) + bytes(rest), source)


@dataclass(frozen=True)
class PackageRewrapper:
    """Re-wraps one stored package and records it (`compliance.rotation.PackageRewrap`).

    `unwrapper` opens the key id a package names; `wrapper` is the keyring's newest key.
    The row is updated only if it still names the key the package was read under and is
    not deleted; a package deleted meanwhile (expiry, erasure) loses the object just
    written too, so no copy outlives its row."""

    db: Database
    storage: ObjectStorage = field(repr=False)
    unwrapper: KeyWrapper = field(repr=False)
    wrapper: KeyWrapper = field(repr=False)

    def rewrap(self, package: PackageRef) -> PackageOutcome:
        try:
            stream = self.storage.download(package.object_key)
        except NotFoundError:
            return PackageOutcome.MISSING
        digest = hashlib.sha256()
        try:
            header, whole = peek_header(stream)
            if header.key_id == self.wrapper.key_id:  # uploaded by a run that stopped
                size = sum(len(chunk) for chunk in _hashed(whole, digest))
                outcome = PackageOutcome.RECONCILED
            else:
                rewrapped = rewrap_stream(whole, self.unwrapper, self.wrapper)
                size = self.storage.upload(package.object_key, _hashed(rewrapped, digest))
                outcome = PackageOutcome.REWRAPPED
        finally:
            _close(stream)
        return self._record(package, size, digest.hexdigest(), outcome)

    def _record(
        self, package: PackageRef, size: int, sha256: str, outcome: PackageOutcome
    ) -> PackageOutcome:
        with self.db.session() as session:
            changed = session.execute(
                update(ExportPackage)
                .where(
                    ExportPackage.id == package.id,
                    ExportPackage.deleted_at.is_(None),
                    ExportPackage.key_id == package.key_id,
                )
                .values(key_id=self.wrapper.key_id, size=size, sha256=sha256)
                .execution_options(synchronize_session=False)
            )
            if getattr(changed, "rowcount", 0):
                extra = {"request_id": str(package.request_id), "key_id": self.wrapper.key_id}
                log.info("keys.package.rewrapped", extra=extra)
                return outcome
            row = session.get(ExportPackage, package.id)
            deleted = row is None or row.deleted_at is not None
        if not deleted:
            return PackageOutcome.CHANGED  # another rotation recorded it first
        self.storage.delete(package.object_key)
        log.info("keys.package.deleted_meanwhile", extra={"request_id": str(package.request_id)})
        return PackageOutcome.GONE


# --- AES-GCM without the plaintext --------------------------------------------------------


class _Gcm:
    """AES-GCM pieces under one data key: tags of given ciphertext, keystreams."""

    def __init__(self, data_key: bytes) -> None:
        self.data_key = data_key
        self.aead = AESGCM(data_key)
        self.hash_key = int.from_bytes(_ctr(data_key, bytes(_BLOCK), bytes(_BLOCK)), "big")

    def tag(self, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """The GCM tag of `ciphertext` with `aad` under `nonce`. AES-GCM of an empty
        plaintext whose associated data is ``aad || padding || ciphertext`` hashes the same
        blocks; only the final length block differs, and GHASH is linear in it."""
        padded = aad + bytes(-len(aad) % _BLOCK)
        joined = self.aead.encrypt(nonce, b"", padded + ciphertext)
        as_aad = (8 * (len(padded) + len(ciphertext))) << 64
        lengths = ((8 * len(aad)) << 64) | (8 * len(ciphertext))
        fix = _gf_mult(as_aad ^ lengths, self.hash_key)
        return (int.from_bytes(joined, "big") ^ fix).to_bytes(_BLOCK, "big")

    def check(self, nonce: bytes, aad: bytes, ciphertext: bytes, tag: bytes, what: str) -> None:
        if not hmac.compare_digest(self.tag(nonce, aad, ciphertext), tag):
            raise IntegrityError(
                f"{what} of the package failed authentication: it was modified or truncated"
            )

    def move(self, ciphertext: bytes, before: bytes, after: bytes) -> bytes:
        """`ciphertext` under nonce `after` instead of `before`: XOR with both keystreams
        (their XOR is computed first, so the plaintext never exists)."""
        fresh = _ctr(self.data_key, _counter(after), bytes(len(ciphertext)))
        both = _ctr(self.data_key, _counter(before), fresh)
        return _xor(ciphertext, both)


def _ctr(key: bytes, counter: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _counter(nonce: bytes) -> bytes:
    """GCM's first counter block for data: the 96-bit nonce, then 2 (1 masks the tag).
    A segment holds at most 2^20 blocks, so CTR's 128-bit increment never carries out
    of GCM's 32-bit counter."""
    return nonce + (2).to_bytes(4, "big")


def _gf_mult(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128), bit-reflected as NIST SP 800-38D defines it."""
    product, v = 0, y
    for bit in range(127, -1, -1):
        if (x >> bit) & 1:
            product ^= v
        v = (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1
    return product


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


# --- framing (exporters/FORMAT.md) ------------------------------------------------------------


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _header_nonce(prefix: bytes) -> bytes:
    return prefix + b"\xff\xff\xff\xff\x02"


def _take_header(source: Iterator[bytes]) -> tuple[Header, bytearray]:
    """The header, and what was read past it."""
    seen = bytearray()

    def recorded() -> Iterator[bytes]:
        for chunk in source:
            seen.extend(chunk)
            yield chunk

    header = read_header(recorded())
    return header, seen[len(header.raw) :]


def _fill(source: Iterator[bytes], buf: bytearray, size: int) -> bytearray:
    while len(buf) < size:
        chunk = next(source, None)
        if chunk is None:
            raise IntegrityError("the package is truncated inside its header")
        buf += chunk
    return buf


def _segments(
    source: Iterator[bytes], first: bytes, full: int
) -> Iterator[tuple[int, bytes, bool]]:
    """(counter, segment with its tag, last?) in order: a full segment once more data
    follows it; the final one is what is left at the end."""
    counter = 0
    buf = bytearray()
    for chunk in _chain(first, source):
        buf += chunk
        at = 0
        while len(buf) - at > full:
            yield counter, bytes(buf[at : at + full]), False
            counter, at = counter + 1, at + full
        del buf[:at]
    if len(buf) == full:
        raise IntegrityError(
            f"the package is truncated: it ends after segment {counter} without a final one"
        )
    if len(buf) < TAG_BYTES:
        raise IntegrityError(f"the package is truncated inside segment {counter}")
    yield counter, bytes(buf), True


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _hashed(chunks: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _close(stream: Iterator[bytes]) -> None:
    close = getattr(stream, "close", None)
    if callable(close):
        close()


__all__ = ["PackageRewrapper", "peek_header", "rewrap_stream"]
