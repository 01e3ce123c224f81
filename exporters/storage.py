"""Object storage for encrypted packages: one small interface, two backends.

`open_storage(settings)` picks the backend from `settings.storage`: ``file:///path`` (the
embedded default: a folder) or ``s3://bucket/prefix`` (any S3-compatible endpoint; see
`exporters.s3`). Uploads are atomic: a reader sees the whole object or none of it.

A backend that uploads in parts (S3) tells an `UploadRecorder` about each multipart upload
before its first part is sent and when it ends, so an upload a crash or an outage leaves
incomplete is found and aborted later (`exporters.uploads`); the folder backend has no
such uploads and ignores it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from compliance.config import Settings
from compliance.errors import (
    ConfigError,
    NotFoundError,
    StorageAccessError,
    StorageUnavailableError,
)
from exporters.objects import (  # the shared interface, re-exported for callers
    MAX_KEY,
    NO_RECORDER,
    READ_CHUNK,
    IncompleteUpload,
    NoRecorder,
    ObjectStorage,
    UploadOutcome,
    UploadRecorder,
    check_key,
)

__all__ = [
    "MAX_KEY",
    "NO_RECORDER",
    "READ_CHUNK",
    "FileStorage",
    "IncompleteUpload",
    "NoRecorder",
    "ObjectStorage",
    "UploadOutcome",
    "UploadRecorder",
    "check_key",
    "open_storage",
]


@dataclass(frozen=True)
class FileStorage:
    """A folder on a local filesystem; uploads land by `os.replace` of a temp file."""

    root: Path

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def upload(
        self, key: str, chunks: Iterable[bytes], recorder: UploadRecorder = NO_RECORDER
    ) -> int:
        path = self._path(key)  # one local file, no multipart upload: nothing to record
        with _os_errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            written = 0
            try:
                with open(staging, "wb") as out:
                    for chunk in chunks:
                        written += out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(staging, path)
            finally:
                staging.unlink(missing_ok=True)
        return written

    def download(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        with _os_errors(key):
            handle = open(path, "rb")  # noqa: SIM115 (closed by the generator)
        return _read_chunks(handle, key)

    def delete(self, key: str) -> None:
        with _os_errors(key):
            self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        with _os_errors(key):
            return self._path(key).stat().st_size

    def keys(self, prefix: str) -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        base = self._path(folder) if folder else self.root
        if not base.is_dir():
            return
        with _os_errors(prefix):
            for path in base.rglob("*"):
                key = path.relative_to(self.root).as_posix()
                if path.is_file() and key.startswith(prefix) and not path.name.startswith("."):
                    yield key


def _read_chunks(handle: BinaryIO, key: str) -> Iterator[bytes]:
    with handle, _os_errors(key):
        while chunk := handle.read(READ_CHUNK):
            yield chunk


@contextlib.contextmanager
def _os_errors(key: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFoundError(f"object '{key}' does not exist in storage") from exc
    except PermissionError as exc:
        raise StorageAccessError(
            f"storage folder refused access to '{key}'; check the folder's permissions"
        ) from exc
    except OSError as exc:
        raise StorageUnavailableError(
            f"storage folder error on '{key}' ({exc.strerror}); check disk space and mounts"
        ) from exc


def open_storage(settings: Settings) -> ObjectStorage:
    """The storage backend named by `settings.storage` (file:// or s3://)."""
    url = urlsplit(settings.storage)
    if url.scheme == "file":
        return FileStorage(Path(unquote(url.path)))
    if url.scheme == "s3":
        from exporters.s3 import S3Storage

        return S3Storage.from_settings(settings)
    raise ConfigError("setting 'storage_url' must start with file:// or s3://")
