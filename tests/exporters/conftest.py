"""Fixtures for the export package tests: keyrings, storage backends, sample sources."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from compliance.config import Settings
from compliance.keyring import Keyring
from exporters.storage import ObjectStorage, open_storage


def make_keyring(*key_ids: str) -> Keyring:
    keys = {kid: os.urandom(32) for kid in key_ids or ("k1",)}
    return Keyring(keys, list(keys)[-1], os.urandom(32))


@pytest.fixture
def keyring() -> Keyring:
    return make_keyring("k1")


@pytest.fixture
def s3_settings(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Settings:
    return Settings(
        home=tmp_path / ".gdpr",
        storage_url=f"s3://{s3_bucket}/packages",
        s3_endpoint_url=s3_endpoint,
        kms_endpoint_url=s3_endpoint,
        keys="test-1:" + base64.b64encode(os.urandom(32)).decode(),
    )


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def storage_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings whose storage is a local folder, then the local S3 server."""
    if request.param == "file":
        return Settings(home=tmp_path / ".gdpr", storage_url=(tmp_path / "objects").as_uri())
    return request.getfixturevalue("s3_settings")  # type: ignore[no-any-return]


@pytest.fixture
def storage(storage_settings: Settings) -> ObjectStorage:
    return open_storage(storage_settings)
