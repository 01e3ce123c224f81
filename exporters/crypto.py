"""Streaming envelope encryption of export packages (format: exporters/FORMAT.md).

A fresh 256-bit data key per package encrypts the body with AES-256-GCM in fixed-size
segments; the data key is wrapped by a `KeyWrapper` (the keyring, or AWS KMS). Every
segment authenticates the whole header, its own position and whether it is the final
one, so truncation, reordering, appended data, bit flips and header edits are detected,
each with its own `IntegrityError` message. No plaintext of a segment is released before
that segment has authenticated.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from compliance.errors import IntegrityError, ValidationError
from exporters.wrapping import keyring_wrapper, wrapper_for

MAGIC = b"GDPREXP"
VERSION = 1
SEGMENT_SIZE = 64 * 1024
TAG_BYTES = 16
PREFIX_BYTES = 7
DATA_KEY_BYTES = 32
MAX_SEGMENTS = 0xFFFF_FFFF  # counter value reserved for the header tag
_FIXED = struct.Struct(">7sBI7sH")  # magic, version, segment size, nonce prefix, kid length
_LEN = struct.Struct(">H")
_MIN_SEGMENT, _MAX_SEGMENT = 4096, 16 * 1024 * 1024


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys with a key-encryption key chosen by key id."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...


@dataclass(frozen=True)
class Header:
    """The parsed header of an encrypted file; `raw` is authenticated by every segment."""

    version: int
    segment_size: int
    nonce_prefix: bytes
    key_id: str
    wrapped_key: bytes
    raw: bytes


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _header_nonce(prefix: bytes) -> bytes:
    return prefix + b"\xff\xff\xff\xff\x02"


def build_header(key_id: str, wrapped: bytes, prefix: bytes, segment_size: int) -> bytes:
    kid = key_id.encode()
    if len(kid) > 1024 or len(wrapped) > 4096:
        raise ValidationError("key id or wrapped key too long for the export format")
    fixed = _FIXED.pack(MAGIC, VERSION, segment_size, prefix, len(kid))
    return fixed + kid + _LEN.pack(len(wrapped)) + wrapped


def encrypt_stream(
    chunks: Iterable[bytes], wrapper: KeyWrapper, segment_size: int = SEGMENT_SIZE
) -> Iterator[bytes]:
    """Encrypt a byte stream: yields the header, then one ciphertext per segment."""
    data_key = AESGCM.generate_key(bit_length=256)
    prefix = os.urandom(PREFIX_BYTES)
    header = build_header(wrapper.key_id, wrapper.wrap(data_key), prefix, segment_size)
    aead = AESGCM(data_key)
    yield header + aead.encrypt(_header_nonce(prefix), b"", header)
    counter = 0
    pending = bytearray()
    for chunk in chunks:
        view = memoryview(chunk)
        if pending:
            take = segment_size - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) < segment_size:
                continue
            yield aead.encrypt(_nonce(prefix, counter, False), pending, header)
            counter += 1
            pending = bytearray()
        while len(view) >= segment_size:  # whole segments straight from the caller's buffer
            yield aead.encrypt(_nonce(prefix, counter, False), view[:segment_size], header)
            counter += 1
            view = view[segment_size:]
        if counter >= MAX_SEGMENTS:
            raise ValidationError("package too large for one encrypted file (2^32 segments)")
        pending += view
    # The final segment is always shorter than a full one (possibly empty).
    yield aead.encrypt(_nonce(prefix, counter, True), pending, header)


def decrypt_stream(chunks: Iterable[bytes], unwrapper: KeyWrapper) -> Iterator[bytes]:
    """Decrypt and verify; yields plaintext only after every segment in it authenticated.

    Segments are opened straight out of each incoming chunk (only a segment split across
    two chunks is copied) into one output buffer per chunk, so a 1 MiB chunk of ciphertext
    becomes one ~1 MiB piece of plaintext."""
    source = iter(chunks)
    buf = bytearray()
    header = _read_header(source, buf)
    yield from _segments(header, source, buf, unwrapper)


@dataclass(frozen=True)
class Plaintext:
    """A decrypting stream whose length is known before any segment is opened."""

    size: int
    chunks: Iterator[bytes]


def decrypt_sized(
    chunks: Iterable[bytes], unwrapper: KeyWrapper, ciphertext_size: int
) -> Plaintext:
    """`decrypt_stream` of a file of `ciphertext_size` bytes, with its plaintext size (for
    a Content-Length). Reads the header now; a size no well-formed file can have is an
    IntegrityError here, before any plaintext exists. The stream still verifies every
    segment: if the file is not what its size promised, it fails as `decrypt_stream` does."""
    source = iter(chunks)
    buf = bytearray()
    header = _read_header(source, buf)
    size = plaintext_size(header, ciphertext_size)
    return Plaintext(size, _segments(header, source, buf, unwrapper))


def plaintext_size(header: Header, ciphertext_size: int) -> int:
    """The plaintext length of a file of `ciphertext_size` bytes, from its header alone: after
    the header and its tag, every segment adds a 16-byte tag to its plaintext, and the
    final segment (always present) takes 16..S+15 bytes."""
    body = ciphertext_size - len(header.raw) - TAG_BYTES
    full, final = divmod(body, header.segment_size + TAG_BYTES)
    if body < TAG_BYTES or final < TAG_BYTES:
        raise IntegrityError(
            f"the file is truncated: {ciphertext_size} bytes cannot end in a final segment"
        )
    return full * header.segment_size + final - TAG_BYTES


def _segments(
    header: Header, source: Iterator[bytes], buf: bytearray, unwrapper: KeyWrapper
) -> Iterator[bytes]:
    """The plaintext after `header`; `buf` holds what arrived with it."""
    aead = AESGCM(unwrapper.unwrap(header.key_id, header.wrapped_key))
    _check_header_tag(aead, header, buf)
    opener = _Opener(aead, header)
    rest = bytes(buf[TAG_BYTES:])  # what came with the header
    buf.clear()
    for chunk in itertools.chain((rest,), source):
        piece = opener.feed(chunk, buf)
        if piece:
            yield piece
        if opener.failure is not None:
            raise opener.failure
    yield opener.finish(buf)


class _Opener:
    """Opens the segments of one stream in order, counting them. A segment that fails
    to authenticate ends the stream: what opened before it is still returned, and the
    failure waits in `failure`."""

    def __init__(self, aead: AESGCM, header: Header) -> None:
        self.aead, self.header = aead, header
        self.size = header.segment_size
        self.full = header.segment_size + TAG_BYTES
        self.counter = 0
        self.failure: IntegrityError | None = None
        self.out = bytearray()  # reused: decrypted into, then copied out once as bytes

    def feed(self, chunk: bytes, pending: bytearray) -> bytes:
        """The plaintext of every segment `chunk` completes and that is not the final one
        (bytes follow it); what may still be the final segment stays in `pending`."""
        view = memoryview(chunk)
        at = 0
        if pending:
            need = self.full - len(pending)
            if len(view) <= need:
                pending += view
                return b""
            pending += view[:need]
            at = need
        whole = max(0, len(view) - at - 1) // self.full  # segments with a byte after them
        with memoryview(pending) as carried:
            segments = [carried] if pending else []
            segments += [view[at + i * self.full : at + (i + 1) * self.full] for i in range(whole)]
            if len(self.out) < len(segments) * self.size:
                self.out = bytearray(len(segments) * self.size)
            opened = self._open_all(segments, self.out)
        pending.clear()
        pending += view[at + whole * self.full :]
        with memoryview(self.out) as plain:
            return bytes(plain[: opened * self.size])

    def _open_all(self, segments: list[memoryview], out: bytearray) -> int:
        """Open `segments` into `out`, in order: how many authenticated."""
        with memoryview(out) as target:
            for slot, data in enumerate(segments):
                nonce = _nonce(self.header.nonce_prefix, self.counter, False)
                place = target[slot * self.size : (slot + 1) * self.size]
                try:
                    self.aead.decrypt_into(nonce, data, self.header.raw, place)
                except InvalidTag:
                    message = _diagnose(self.aead, self.header, data, self.counter, False)
                    self.failure = IntegrityError(message)
                    return slot
                finally:
                    place.release()
                self.counter += 1
        return len(segments)

    def finish(self, pending: bytearray) -> bytes:
        """The final segment, which must be what is left."""
        with memoryview(pending) as view:
            if len(pending) == self.full:
                _open_segment(self.aead, self.header, view, self.counter, last=False)
                raise IntegrityError(
                    f"the file is truncated: it ends after segment {self.counter} "
                    "without a final segment"
                )
            if len(pending) < TAG_BYTES:
                raise IntegrityError(f"the file is truncated inside segment {self.counter}")
            return _open_segment(self.aead, self.header, view, self.counter, last=True)


def _read_header(source: Iterator[bytes], buf: bytearray) -> Header:
    _fill(source, buf, _FIXED.size, "header")
    magic, version, segment_size, prefix, kid_len = _FIXED.unpack_from(buf)
    if magic != MAGIC:
        raise IntegrityError("not an encrypted gdpr export (unknown magic bytes)")
    if version != VERSION:
        raise IntegrityError(f"encrypted format version {version} is not supported; upgrade gdpr")
    if not _MIN_SEGMENT <= segment_size <= _MAX_SEGMENT:
        raise IntegrityError("the header was modified: impossible segment size")
    at = _FIXED.size + kid_len
    _fill(source, buf, at + _LEN.size, "header")
    (wrapped_len,) = _LEN.unpack_from(buf, at)
    end = at + _LEN.size + wrapped_len
    _fill(source, buf, end + TAG_BYTES, "header")
    try:
        key_id = bytes(buf[_FIXED.size : at]).decode()
    except UnicodeDecodeError:
        raise IntegrityError("the header was modified: key id is not text") from None
    raw = bytes(buf[:end])
    header = Header(version, segment_size, prefix, key_id, raw[at + _LEN.size :], raw)
    del buf[:end]
    return header


def _fill(source: Iterator[bytes], buf: bytearray, size: int, what: str) -> None:
    while len(buf) < size:
        chunk = next(source, None)
        if chunk is None:
            raise IntegrityError(f"the file is truncated inside its {what}")
        buf += chunk


def _check_header_tag(aead: AESGCM, header: Header, buf: bytearray) -> None:
    try:
        aead.decrypt(_header_nonce(header.nonce_prefix), bytes(buf[:TAG_BYTES]), header.raw)
    except InvalidTag:
        raise IntegrityError(
            "the header was modified (segment size or nonce); the file cannot be trusted"
        ) from None


def _open_segment(
    aead: AESGCM, header: Header, data: memoryview, counter: int, *, last: bool
) -> bytes:
    prefix = header.nonce_prefix
    try:
        return aead.decrypt(_nonce(prefix, counter, last), data, header.raw)
    except InvalidTag:
        pass
    raise IntegrityError(_diagnose(aead, header, data, counter, last)) from None


def _diagnose(aead: AESGCM, header: Header, data: memoryview, counter: int, last: bool) -> str:
    """Explain a failed segment: truncated, appended, moved, or modified (slow path)."""
    prefix = header.nonce_prefix
    if _opens(aead, _nonce(prefix, counter, not last), data, header.raw):
        if last:
            return f"the file is truncated: it ends after segment {counter}, not a final one"
        return f"data was appended after the final segment {counter}"
    for other in range(max(0, counter - 1024), counter + 1024):
        for flag in (False, True):
            if other != counter and _opens(aead, _nonce(prefix, other, flag), data, header.raw):
                return f"segments are out of order: segment {other} found at position {counter}"
    return (
        f"segment {counter} failed authentication: the file was modified, corrupted "
        "or has data appended"
    )


def _opens(aead: AESGCM, nonce: bytes, data: memoryview, aad: bytes) -> bool:
    try:
        aead.decrypt(nonce, data, aad)
    except InvalidTag:
        return False
    return True


def read_header(chunks: Iterable[bytes]) -> Header:
    """Parse just the header (e.g. to show which key id a file needs)."""
    return _read_header(iter(chunks), bytearray())


__all__ = [
    "Header",
    "KeyWrapper",
    "Plaintext",
    "decrypt_sized",
    "decrypt_stream",
    "encrypt_stream",
    "keyring_wrapper",
    "plaintext_size",
    "read_header",
    "wrapper_for",
]
