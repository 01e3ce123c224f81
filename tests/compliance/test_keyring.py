"""The keyring: sealed values name their key, reseal moves them to the newest key, and the
services refuse development keys beside a PostgreSQL control database unless told."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from compliance.config import Settings
from compliance.errors import ConfigError, IntegrityError
from compliance.keyring import (
    DEV_KEYRING_FILE,
    Keyring,
    load_keyring,
    refuse_development_keys,
    sealed_key_id,
    sealed_prefix,
    uses_development_keys,
)

PG_URL = "postgresql+psycopg://gdpr@db.internal/gdpr"
OLD = Keyring({"k1": os.urandom(32)}, "k1", os.urandom(32))
BOTH = Keyring({"k1": OLD.keys["k1"], "2026-02": os.urandom(32)}, "2026-02", OLD.pseudonym_key)


def test_a_sealed_value_names_the_key_that_sealed_it() -> None:
    sealed = BOTH.seal(b"ada@example.com", b"aad")
    assert sealed_key_id(sealed) == "2026-02"
    assert sealed.startswith(sealed_prefix("2026-02"))
    assert not sealed.startswith(sealed_prefix("k1"))


def test_reseal_moves_a_value_to_the_newest_key_with_the_same_associated_data() -> None:
    sealed = OLD.seal(b"ada@example.com", b"request:email")
    moved = BOTH.reseal(sealed, b"request:email")
    assert sealed_key_id(moved) == "2026-02"
    only_new = Keyring({"2026-02": BOTH.keys["2026-02"]}, "2026-02", OLD.pseudonym_key)
    assert only_new.unseal(moved, b"request:email") == b"ada@example.com"
    with pytest.raises(IntegrityError, match="failed authentication"):
        only_new.unseal(moved, b"other:email")


def test_resealing_a_value_the_newest_key_sealed_changes_nothing() -> None:
    sealed = BOTH.seal(b"x", b"aad")
    assert BOTH.reseal(sealed, b"aad") is sealed


@pytest.mark.parametrize("sealed", [b"", b"\x05k1", b"\x02k1" + b"\x00" * 20])
def test_a_truncated_sealed_value_is_an_integrity_error(sealed: bytes) -> None:
    with pytest.raises(IntegrityError, match="truncated"):
        OLD.unseal(sealed)


def test_a_sealed_value_under_a_removed_key_says_which_key_to_add_back() -> None:
    sealed = OLD.seal(b"x")
    only_new = Keyring({"2026-02": BOTH.keys["2026-02"]}, "2026-02", OLD.pseudonym_key)
    with pytest.raises(IntegrityError, match="'k1' is not in the keyring; add it to GDPR_KEYS"):
        only_new.reseal(sealed)


# --- development keys -------------------------------------------------------------------------


def dev_settings(tmp_path: Path, **changes: str) -> Settings:
    return Settings(home=tmp_path / ".gdpr", **changes)  # type: ignore[arg-type]


def configured(home_settings: Settings, keyring: Keyring) -> Settings:
    line = ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in keyring.keys.items())
    return home_settings.with_overrides(
        database_url=PG_URL,
        keys=line,
        pseudonym_key=base64.b64encode(keyring.pseudonym_key).decode(),
    )


def test_postgresql_with_the_development_keyring_is_refused_in_one_line(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path, database_url=PG_URL)
    keyring = load_keyring(settings, allow_development=True)
    assert keyring.development
    with pytest.raises(ConfigError) as caught:
        refuse_development_keys(settings, keyring, allow=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "set GDPR_KEYS" in message and "--insecure-dev-keys" in message


def test_insecure_dev_keys_accepts_them_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dev_settings(tmp_path, database_url=PG_URL)
    keyring = load_keyring(settings, allow_development=True)
    with caplog.at_level(logging.WARNING, logger="gdpr.keyring"):
        refuse_development_keys(settings, keyring, allow=True)
    assert any("keyring.development.allowed" in r.getMessage() for r in caplog.records)


def test_without_keys_postgresql_still_needs_them_unless_development_is_allowed(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="no keys configured"):
        load_keyring(dev_settings(tmp_path, database_url=PG_URL))


def test_development_keys_copied_into_gdpr_keys_are_refused_too(tmp_path: Path) -> None:
    embedded = dev_settings(tmp_path)
    dev = load_keyring(embedded)  # writes the development keyring file under home
    assert (embedded.home / DEV_KEYRING_FILE).exists()
    copied = configured(embedded, dev)
    keyring = load_keyring(copied)
    assert not keyring.development
    assert uses_development_keys(copied, keyring)
    with pytest.raises(ConfigError, match="development keys must not protect"):
        refuse_development_keys(copied, keyring, allow=False)


def test_the_embedded_mode_keeps_its_development_keyring(tmp_path: Path) -> None:
    settings = dev_settings(tmp_path)
    refuse_development_keys(settings, load_keyring(settings), allow=False)


def test_configured_keys_on_postgresql_pass(tmp_path: Path) -> None:
    embedded = dev_settings(tmp_path)
    load_keyring(embedded)  # a development keyring file exists, but these keys are others
    settings = configured(embedded, BOTH)
    keyring = load_keyring(settings)
    assert not uses_development_keys(settings, keyring)
    refuse_development_keys(settings, keyring, allow=False)


def test_a_damaged_development_keyring_file_does_not_count_as_development_keys(
    tmp_path: Path,
) -> None:
    settings = configured(dev_settings(tmp_path), BOTH)
    settings.home.mkdir(parents=True)
    (settings.home / DEV_KEYRING_FILE).write_text(json.dumps({"keys": "nonsense"}))
    refuse_development_keys(settings, load_keyring(settings), allow=False)
