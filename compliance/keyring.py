"""Key material: key-encryption keys by id (rotation) and the pseudonym HMAC key.

Keys come from `GDPR_KEYS` / `GDPR_KEYS_FILE` and `GDPR_PSEUDONYM_KEY`. With none set
(the embedded default), a development keyring is generated once under the home folder,
with a loud warning: it is fine for trying things out and wrong for production.

Format of a keyring: ``kid:base64key[,kid:base64key...]``; the last key is the newest and
is used for new encryptions; all listed keys can decrypt.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from compliance.config import Settings
from compliance.errors import ConfigError, IntegrityError, ValidationError

log = logging.getLogger("gdpr.keyring")

KEY_BYTES = 32
NONCE_BYTES = 12
DEV_KEYRING_FILE = "dev-keys.json"
_NEW_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Keyring:
    """Key-encryption keys by id (newest last) and the pseudonym key."""

    keys: dict[str, bytes] = field(repr=False)
    newest_id: str
    pseudonym_key: bytes = field(repr=False)
    development: bool = False

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise IntegrityError(
                f"key id '{key_id}' is not in the keyring; add it to GDPR_KEYS to decrypt"
            ) from None

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt a small value (an identity) with the newest key: kid|nonce|ciphertext."""
        nonce = os.urandom(NONCE_BYTES)
        kid = self.newest_id.encode()
        body = AESGCM(self.keys[self.newest_id]).encrypt(nonce, plaintext, kid + b"|" + aad)
        return bytes([len(kid)]) + kid + nonce + body

    def unseal(self, sealed: bytes, aad: bytes = b"") -> bytes:
        kid_len = sealed[0]
        kid = sealed[1 : 1 + kid_len]
        nonce = sealed[1 + kid_len : 1 + kid_len + NONCE_BYTES]
        body = sealed[1 + kid_len + NONCE_BYTES :]
        try:
            return AESGCM(self.key(kid.decode())).decrypt(nonce, body, kid + b"|" + aad)
        except InvalidTag as exc:
            raise IntegrityError(
                "sealed value failed authentication; wrong key or tampered"
            ) from exc


def parse_keys(text: str, origin: str) -> dict[str, bytes]:
    """Parse ``kid:base64key,...`` into an ordered mapping (newest last)."""
    keys: dict[str, bytes] = {}
    for index, part in enumerate(p.strip() for p in text.replace("\n", ",").split(",")):
        if not part:
            continue
        kid, sep, encoded = part.partition(":")
        if not sep or not kid or not kid.isascii() or len(kid) > 64:
            raise ConfigError(f"{origin}: entry {index + 1} must look like 'kid:base64key'")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ConfigError(f"{origin}: key '{kid}' is not valid base64") from exc
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{origin}: key '{kid}' must be {KEY_BYTES} bytes, not {len(key)}")
        if kid in keys:
            raise ConfigError(f"{origin}: key id '{kid}' appears twice")
        keys[kid] = key
    return keys


def new_key_line(key_id: str) -> str:
    """A fresh ``kid:base64key`` entry, for `gdpr keys generate`."""
    if not _NEW_KEY_ID.fullmatch(key_id):
        raise ValidationError(
            "key id must be 1 to 64 letters, digits, '.', '_' or '-' (e.g. 2026-01)"
        )
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def load_keyring(settings: Settings) -> Keyring:
    """The keyring for these settings; a development keyring when none is configured."""
    text = settings.keys
    origin = "GDPR_KEYS"
    if not text and settings.keys_file:
        origin = settings.keys_file
        try:
            text = Path(settings.keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read keys file {settings.keys_file}: {exc}") from exc
    if not text:
        if not settings.embedded:
            raise ConfigError("no keys configured; set GDPR_KEYS (see `gdpr keys generate`)")
        return _development_keyring(settings.home)
    keys = parse_keys(text, origin)
    if not keys:
        raise ConfigError(f"{origin}: no keys found")
    if not settings.pseudonym_key:
        raise ConfigError("GDPR_PSEUDONYM_KEY is not set; generate one with `gdpr keys generate`")
    return Keyring(keys, list(keys)[-1], _decode_pseudonym_key(settings.pseudonym_key))


def _decode_pseudonym_key(encoded: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ConfigError("GDPR_PSEUDONYM_KEY is not valid base64") from exc
    if len(key) < 16:
        raise ConfigError("GDPR_PSEUDONYM_KEY must hold at least 16 bytes")
    return key


def _development_keyring(home: Path) -> Keyring:
    path = home / DEV_KEYRING_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        data = {
            "keys": new_key_line("dev-1"),
            "pseudonym_key": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode(),
        }
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        try:
            os.link(staging, path)  # atomic, and loses to a concurrent creator
            log.warning("keyring.development.created: NOT FOR PRODUCTION, set GDPR_KEYS")
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    data = json.loads(path.read_text(encoding="utf-8"))
    keys = parse_keys(data["keys"], str(path))
    return Keyring(
        keys, list(keys)[-1], _decode_pseudonym_key(data["pseudonym_key"]), development=True
    )
