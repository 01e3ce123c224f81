"""The objectstore connector against the local S3-compatible server."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from compliance.config import Settings
from compliance.errors import (
    ManifestError,
    RetryableError,
    SourceRefusedError,
    StorageUnavailableError,
    TerminalError,
)
from compliance.identities import Identities, Identity
from compliance.sources.base import Action, DataSource, Disposition, FileItem
from compliance.sources.objectstore import ObjectStoreSource, PrefixUsage, build
from compliance.sources.objectstore_s3 import CHUNK_BYTES, Bucket, ObjectStoreConfig
from tests.compliance.sources.chunks import erase_chunks

pytestmark = pytest.mark.s3

ADA = Identities.of([Identity("user_id", "1"), Identity("email", "ada@example.com")])
Build = Callable[..., ObjectStoreSource]


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[Any]:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    yield client
    client.close()


@pytest.fixture
def make(s3_endpoint: str, s3_bucket: str) -> Iterator[Build]:
    opened: list[ObjectStoreSource] = []

    def make_source(**spec: Any) -> ObjectStoreSource:
        full = {
            "bucket": s3_bucket,
            "endpoint_url": s3_endpoint,
            "prefixes": ["avatars/{user_id}/"],
        }
        source = build("avatars", {**full, **spec}, Settings())
        opened.append(source)
        return source

    yield make_source
    for source in opened:
        source.close()


def put(s3: Any, bucket: str, objects: Mapping[str, bytes]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()
            )
        )


def keys(s3: Any, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


SAMPLE = {
    "avatars/1/me.png": b"ada-png",
    "avatars/1/banner.jpg": b"ada-jpg",
    "avatars/10/me.png": b"user-ten",
    "avatars/2/me.png": b"bob-png",
    "avatars/1.png": b"not-under-the-prefix",
}


erase_all = partial(erase_chunks, most=100)


def test_source_satisfies_the_data_source_protocol(make: Build) -> None:
    assert isinstance(make(), DataSource)


def test_identity_types_are_the_fields_of_the_prefixes(make: Build) -> None:
    assert make().identity_types() == {"user_id"}
    both = make(prefixes=["avatars/{user_id}/", {"prefix": "exports/{email}/"}])
    assert both.identity_types() == {"user_id", "email"}


def test_export_streams_each_of_the_subjects_objects_and_nothing_else(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    items = list(make(purpose="Profile pictures").export(ADA))
    assert all(isinstance(item, FileItem) for item in items)
    files = {item.path: b"".join(item.chunks()) for item in items if isinstance(item, FileItem)}
    assert files == {"avatars/1/me.png": b"ada-png", "avatars/1/banner.jpg": b"ada-jpg"}
    assert {item.meta.purpose for item in items} == {"Profile pictures"}
    assert {item.size for item in items} == {7}


def test_export_streams_large_objects_in_bounded_chunks(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB
    put(s3, s3_bucket, {"avatars/1/big.bin": body})
    (item,) = list(make().export(ADA))
    assert isinstance(item, FileItem)
    chunks = list(item.chunks())
    assert len(chunks) >= 4
    assert max(len(c) for c in chunks) <= CHUNK_BYTES
    assert b"".join(chunks) == body


def test_plan_counts_objects_and_usage_counts_bytes_without_writing(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    source = make()
    plan = source.plan(ADA, Action.ERASE)
    assert [(p.location, p.disposition, p.count) for p in plan.locations] == [
        ("avatars/{user_id}/", Disposition.DELETE, 2)
    ]
    assert source.plan(ADA, Action.EXPORT).total == 2
    assert source.usage(ADA) == [PrefixUsage("avatars/{user_id}/", 2, 14)]
    assert keys(s3, s3_bucket) == set(SAMPLE)


def test_erase_deletes_the_subjects_objects_only_and_verify_finds_none(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    source = make()
    assert len(source.verify(ADA)) == 1
    assert sum(erase_all(source, ADA, 1000)) == 2
    assert keys(s3, s3_bucket) == set(SAMPLE) - {"avatars/1/me.png", "avatars/1/banner.jpg"}
    assert source.verify(ADA) == []


def test_erase_of_more_than_1000_objects_runs_in_batches_of_at_most_1000(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, {f"avatars/1/{i:05}.png": b"x" for i in range(2345)} | SAMPLE)
    source = make()
    assert source.plan(ADA, Action.ERASE).total == 2347
    assert erase_all(source, ADA, batch_size=5000) == [1000, 1000, 347]
    assert keys(s3, s3_bucket) == {"avatars/10/me.png", "avatars/2/me.png", "avatars/1.png"}
    assert erase_all(source, ADA, batch_size=5000) == [0]


def test_erase_resumes_from_its_checkpoint_in_a_new_source(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    first = make().erase(ADA, {}, batch_size=1)
    assert (first.done, first.deleted) == (False, 1)
    assert "avatars" not in repr(first.checkpoint)  # keys hold identities; never checkpointed
    rest = erase_all(make(), ADA, batch_size=1)
    assert sum(rest) == 1
    assert "avatars/1/me.png" not in keys(s3, s3_bucket)


def test_erase_in_a_versioned_bucket_removes_every_version_and_delete_marker(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    put(s3, s3_bucket, SAMPLE)
    put(s3, s3_bucket, {"avatars/1/me.png": b"ada-png-v2"})
    s3.delete_object(Bucket=s3_bucket, Key="avatars/1/banner.jpg")  # leaves a delete marker
    source = make()
    assert source.plan(ADA, Action.ERASE).total == 4  # 2 + 1 versions, 1 marker
    assert sum(erase_all(source, ADA, 2)) == 4
    left = s3.list_object_versions(Bucket=s3_bucket, Prefix="avatars/1/")
    assert left.get("Versions", []) == [] and left.get("DeleteMarkers", []) == []
    others = s3.list_object_versions(Bucket=s3_bucket, Prefix="avatars/2/")["Versions"]
    assert len(others) == 1
    assert source.verify(ADA) == []


def test_verify_counts_leftover_versions_in_a_versioned_bucket(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    put(s3, s3_bucket, {"avatars/1/me.png": b"a"})
    s3.delete_object(Bucket=s3_bucket, Key="avatars/1/me.png")  # "deleted", still restorable
    (residue,) = make().verify(ADA)
    assert (residue.location, residue.count) == ("avatars:avatars/{user_id}/", 2)


def test_identity_values_that_could_escape_their_prefix_match_nothing(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    sneaky = Identities.of([Identity("user_id", "../2"), Identity("user_id", "")])
    source = make()
    assert list(source.export(sneaky)) == []
    assert erase_all(source, sneaky, 1000) == [0]
    assert keys(s3, s3_bucket) == set(SAMPLE)


def test_subject_without_the_templated_identity_is_skipped(
    make: Build, s3: Any, s3_bucket: str
) -> None:
    put(s3, s3_bucket, SAMPLE)
    only_email = Identities.of([Identity("email", "ada@example.com")])
    assert make().plan(only_email, Action.ERASE).total == 0
    assert make().erase(only_email, {}, 1000).done


def test_missing_bucket_is_a_terminal_error_naming_the_bucket_and_the_fix(make: Build) -> None:
    with pytest.raises(SourceRefusedError, match=r"'no-such-bucket-x' does not exist; create it"):
        list(make(bucket="no-such-bucket-x").export(ADA))


def test_unreachable_endpoint_is_a_retryable_error_without_identities() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = {
        "bucket": "b",
        "endpoint_url": f"http://127.0.0.1:{port}",
        "prefixes": ["avatars/{user_id}/"],
        "max_attempts": 1,
        "connect_timeout": 1,
    }
    source = build("avatars", spec, Settings())
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            source.erase(ADA, {}, 100)
    finally:
        source.close()
    assert isinstance(caught.value, RetryableError)
    assert "avatars/1" not in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("AccessDenied", 403, SourceRefusedError),
        ("InvalidAccessKeyId", 403, SourceRefusedError),
        ("SlowDown", 503, StorageUnavailableError),
        ("WeirdServerThing", 500, StorageUnavailableError),
        ("InvalidArgument", 400, SourceRefusedError),
    ],
)
def test_s3_error_codes_translate_to_retryable_or_terminal(
    code: str, status: int, error: type[Exception]
) -> None:
    bucket = Bucket("avatars", ObjectStoreConfig("b", "http://s3", "us-east-1", False), None)
    answer: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    with pytest.raises(error) as caught, bucket.errors("list objects"):
        raise ClientError(answer, "ListObjectsV2")
    assert isinstance(
        caught.value, TerminalError if error is SourceRefusedError else RetryableError
    )
    assert str(caught.value).startswith("sources.avatars: cannot list objects")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"bucket": ""}, r"sources\.avatars\.bucket is missing or empty"),
        ({"buckit": "x"}, r"sources\.avatars\.buckit is not a known setting"),
        ({"prefixes": []}, r"sources\.avatars\.prefixes is missing or empty"),
        ({"prefixes": ["avatars/{userid}/"]}, r"sources\.avatars\.prefixes\[0\] names an unknown"),
        ({"prefixes": ["avatars/{user_id}"]}, r"prefixes\[0\]: put a '/' right after each field"),
        ({"prefixes": [{"path": "a/{user_id}/"}]}, r"prefixes\[0\]\.path is not a known setting"),
        ({"endpoint_url": "ftp://h"}, r"sources\.avatars\.endpoint_url must be an http"),
        ({"versioned": "yes"}, r"sources\.avatars\.versioned must be true or false"),
    ],
)
def test_build_refuses_a_bad_spec_naming_the_key(
    spec: dict[str, Any], message: str, s3_endpoint: str
) -> None:
    full = {"bucket": "b", "endpoint_url": s3_endpoint, "prefixes": ["avatars/{user_id}/"]}
    with pytest.raises(ManifestError, match=message):
        build("avatars", {**full, **spec}, Settings())


def test_endpoint_defaults_to_the_settings(s3_endpoint: str) -> None:
    source = build(
        "a", {"bucket": "b", "prefixes": ["x/{email}/"]}, Settings(s3_endpoint_url=s3_endpoint)
    )
    source.close()
    assert source.config.endpoint_url == s3_endpoint
