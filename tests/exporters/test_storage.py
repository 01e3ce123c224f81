"""Object storage: both backends store, stream, size and delete; uploads are atomic."""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from compliance.config import Settings
from compliance.errors import (
    NotFoundError,
    StorageAccessError,
    StorageUnavailableError,
    ValidationError,
)
from exporters.s3 import S3Storage
from exporters.storage import ObjectStorage, open_storage

MIB = 1024 * 1024


class BoomError(RuntimeError):
    pass


def failing_after(data: bytes, piece: int) -> Iterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
    raise BoomError("source failed mid-stream")


def test_an_uploaded_object_streams_back_identically(storage: ObjectStorage) -> None:
    data = os.urandom(3 * MIB + 17)
    written = storage.upload(
        "exports/a.zip.enc", (data[i : i + 65552] for i in range(0, len(data), 65552))
    )
    assert written == len(data)
    assert storage.size("exports/a.zip.enc") == len(data)
    assert storage.exists("exports/a.zip.enc")
    chunks = list(storage.download("exports/a.zip.enc"))
    assert b"".join(chunks) == data
    assert len(chunks) > 1  # streamed, not one blob


def test_an_empty_body_is_stored_as_an_empty_object(storage: ObjectStorage) -> None:
    assert storage.upload("exports/empty", iter([])) == 0
    assert b"".join(storage.download("exports/empty")) == b""


def test_uploading_again_replaces_the_object(storage: ObjectStorage) -> None:
    storage.upload("exports/b", [b"first version"])
    storage.upload("exports/b", [b"second"])
    assert b"".join(storage.download("exports/b")) == b"second"


def test_delete_removes_the_object_and_is_idempotent(storage: ObjectStorage) -> None:
    storage.upload("exports/c", [b"x"])
    storage.delete("exports/c")
    storage.delete("exports/c")
    assert not storage.exists("exports/c")


def test_a_missing_object_is_not_found_on_download_and_size(storage: ObjectStorage) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        storage.download("exports/missing")
    with pytest.raises(NotFoundError):
        storage.size("exports/missing")


@pytest.mark.parametrize("key", ["../escape", "exports/../../etc", "/abs", "a//b", "a\\b", ""])
def test_keys_that_could_escape_the_root_are_refused(storage: ObjectStorage, key: str) -> None:
    with pytest.raises(ValidationError, match="relative path"):
        storage.upload(key, [b"x"])


def test_keys_lists_what_is_under_a_prefix_and_nothing_else(storage: ObjectStorage) -> None:
    assert list(storage.keys("audit-checkpoints/")) == []
    for key in ("audit-checkpoints/a.json", "audit-checkpoints/b.json", "exports/x.enc"):
        storage.upload(key, [b"{}"])
    storage.upload("audit-checkpoints-old/c.json", [b"{}"])
    listed = sorted(storage.keys("audit-checkpoints/"))
    assert listed == ["audit-checkpoints/a.json", "audit-checkpoints/b.json"]
    assert list(storage.keys("exports/")) == ["exports/x.enc"]


def test_a_failed_upload_leaves_neither_object_nor_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    storage = open_storage(Settings(storage_url=root.as_uri()))
    storage.upload("exports/d", [b"old"])
    with pytest.raises(BoomError):
        storage.upload("exports/d", failing_after(os.urandom(MIB), 4096))
    assert b"".join(storage.download("exports/d")) == b"old"
    assert sorted(p.name for p in (root / "exports").iterdir()) == ["d"]


@pytest.mark.s3
def test_large_bodies_use_multipart_upload(s3_settings: Settings, s3_bucket: str) -> None:
    storage = open_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    data = os.urandom(20 * MIB)
    storage.upload("exports/big", (data[i : i + MIB] for i in range(0, len(data), MIB)))
    client = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, region_name="us-east-1")
    head = client.head_object(Bucket=s3_bucket, Key="packages/exports/big")
    assert head["ETag"].strip('"').endswith("-3")  # 8 + 8 + 4 MiB parts
    assert b"".join(storage.download("exports/big")) == data


@pytest.mark.s3
def test_multipart_parts_carry_crc32_checksums_the_object_keeps(
    s3_settings: Settings, s3_bucket: str
) -> None:
    storage = open_storage(s3_settings)
    data = os.urandom(17 * MIB)
    storage.upload("exports/sum", (data[i : i + MIB] for i in range(0, len(data), MIB)))
    client = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, region_name="us-east-1")
    head = client.head_object(Bucket=s3_bucket, Key="packages/exports/sum", ChecksumMode="ENABLED")
    part_sums = b"".join(
        zlib.crc32(data[i : i + 8 * MIB]).to_bytes(4, "big") for i in range(0, len(data), 8 * MIB)
    )
    composite = base64.b64encode(zlib.crc32(part_sums).to_bytes(4, "big")).decode()
    assert head["ChecksumCRC32"].removesuffix("-3") == composite  # AWS adds the part count


@pytest.mark.s3
def test_a_failed_multipart_upload_is_aborted_and_leaves_nothing(
    s3_settings: Settings, s3_bucket: str
) -> None:
    storage = open_storage(s3_settings)
    with pytest.raises(BoomError):
        storage.upload("exports/e", failing_after(os.urandom(20 * MIB), MIB))
    client = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, region_name="us-east-1")
    assert not storage.exists("exports/e")
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


@pytest.mark.s3
def test_server_side_encryption_is_requested_when_configured(
    s3_settings: Settings, s3_bucket: str
) -> None:
    storage = open_storage(s3_settings.with_overrides(s3_sse="AES256"))
    storage.upload("exports/f", [b"x"])
    client = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url, region_name="us-east-1")
    head = client.head_object(Bucket=s3_bucket, Key="packages/exports/f")
    assert head["ServerSideEncryption"] == "AES256"


@pytest.mark.s3
def test_a_missing_bucket_is_a_terminal_error_with_a_hint(s3_settings: Settings) -> None:
    storage = open_storage(s3_settings.with_overrides(storage_url="s3://no-such-bucket-gdpr"))
    with pytest.raises(StorageAccessError, match="bucket does not exist"):
        storage.upload("exports/g", [b"x"])


def test_an_unreachable_endpoint_is_retryable() -> None:
    settings = Settings(storage_url="s3://bucket", s3_endpoint_url="http://127.0.0.1:1")
    storage = open_storage(settings)
    with pytest.raises(StorageUnavailableError, match="S3 unreachable"):
        storage.exists("exports/h")
