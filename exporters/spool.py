"""A byte spool that never puts plaintext on disk.

Some package entries need a second pass over data that can only be read once (the CSV
twin of a JSON entry, the manifest's per-file list). The spool keeps a little in memory;
past that it writes to an anonymous temp file, each block sealed with AES-GCM under a
throwaway key that exists only in this process's memory.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import IO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MEMORY_LIMIT = 1024 * 1024
BLOCK = 256 * 1024
_LEN = struct.Struct(">I")


class EncryptedSpool:
    """Append bytes, then read them back once, in order."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT) -> None:
        self._memory_limit = memory_limit
        self._buf = bytearray()
        self._file: IO[bytes] | None = None
        self._aead: AESGCM | None = None
        self._blocks = 0

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= BLOCK and (self._file or len(self._buf) > self._memory_limit):
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="gdpr-spool-")  # noqa: SIM115
            self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        assert self._aead is not None
        sealed = self._aead.encrypt(self._blocks.to_bytes(12, "big"), self._buf, None)
        self._file.write(_LEN.pack(len(sealed)) + sealed)
        self._blocks += 1
        self._buf = bytearray()

    def read(self) -> Iterator[bytes]:
        """Everything written so far, in blocks."""
        if self._file is None:
            yield bytes(self._buf)
            return
        assert self._aead is not None
        if self._buf:
            self._spill()
        self._file.seek(0)
        for number in range(self._blocks):
            (size,) = _LEN.unpack(self._file.read(_LEN.size))
            yield self._aead.decrypt(number.to_bytes(12, "big"), self._file.read(size), None)

    def lines(self) -> Iterator[bytes]:
        """The spooled bytes split at newlines (without them)."""
        rest = b""
        for block in self.read():
            parts = (rest + block).split(b"\n")
            rest = parts.pop()
            yield from parts
        if rest:
            yield rest

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf = bytearray()

    def __enter__(self) -> EncryptedSpool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
