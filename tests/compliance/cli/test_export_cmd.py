"""`gdpr export decrypt`: operators get the ZIP back, or one clear line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.keyring import load_keyring
from exporters.crypto import encrypt_stream, wrapper_for
from tests.conftest import make_test_keys

ZIP = b"PK\x03\x04 pretend zip " * 5000


@pytest.fixture
def encrypted(sqlite_settings: Settings, tmp_path: Path) -> Path:
    wrapper = wrapper_for(sqlite_settings, load_keyring(sqlite_settings))
    path = tmp_path / "package.zip.enc"
    path.write_bytes(b"".join(encrypt_stream([ZIP], wrapper)))
    return path


def run(settings: Settings, *args: str) -> Result:
    app = App()
    app._cache.update(settings=settings)
    return CliRunner().invoke(cli, list(args), obj=app)


def test_decrypt_writes_the_zip_next_to_the_file(
    sqlite_settings: Settings, encrypted: Path
) -> None:
    result = run(sqlite_settings, "export", "decrypt", str(encrypted), "--json")
    assert result.exit_code == 0, result.output
    out = encrypted.with_suffix("")
    assert out.read_bytes() == ZIP
    assert json.loads(result.stdout) == {"output": str(out), "bytes": len(ZIP), "key_id": "dev-1"}


def test_a_tampered_file_exits_7_and_writes_nothing(
    sqlite_settings: Settings, encrypted: Path, tmp_path: Path
) -> None:
    blob = bytearray(encrypted.read_bytes())
    blob[-40] ^= 1
    encrypted.write_bytes(bytes(blob))
    out = tmp_path / "out.zip"
    result = run(sqlite_settings, "export", "decrypt", str(encrypted), "-o", str(out))
    assert result.exit_code == 7
    assert "failed authentication" in result.output
    assert result.output.strip().count("\n") == 0
    assert list(tmp_path.glob("*.zip")) == [] and list(tmp_path.glob(".*part")) == []


def test_an_existing_output_is_not_replaced_without_force(
    sqlite_settings: Settings, encrypted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.zip"
    out.write_bytes(b"keep me")
    refused = run(sqlite_settings, "export", "decrypt", str(encrypted), "-o", str(out))
    assert refused.exit_code == 2 and "--force" in refused.output
    assert out.read_bytes() == b"keep me"
    forced = run(sqlite_settings, "export", "decrypt", str(encrypted), "-o", str(out), "--force")
    assert forced.exit_code == 0 and out.read_bytes() == ZIP


def test_a_file_encrypted_under_another_keyring_names_the_missing_key(
    sqlite_settings: Settings, encrypted: Path, tmp_path: Path
) -> None:
    other = sqlite_settings.with_overrides(**make_test_keys())
    result = run(other, "export", "decrypt", str(encrypted), "-o", str(tmp_path / "x.zip"))
    assert result.exit_code == 7
    assert "key id 'dev-1' is not in the keyring" in result.output
    other_dev = sqlite_settings.with_overrides(home=tmp_path / "other-home")
    result = run(other_dev, "export", "decrypt", str(encrypted), "-o", str(tmp_path / "x.zip"))
    assert result.exit_code == 7
    assert "does not open with key 'dev-1'" in result.output
