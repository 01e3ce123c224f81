"""Key material: key-encryption keys by id (rotation) and the pseudonym HMAC key.

Keys come from `GDPR_KEYS` / `GDPR_KEYS_FILE` and `GDPR_PSEUDONYM_KEY`. With none set
(the embedded default), a development keyring is generated once under the home folder,
with a loud warning: it is fine for trying things out and wrong for production.

Format of a keyring: ``kid:base64key[,kid:base64key...]``; the last key is the newest and
is used for new encryptions; all listed keys can decrypt. A sealed value names the key that
sealed it (`sealed_key_id`), so `gdpr keys status` can tell what each key still protects and
`gdpr keys rotate` (compliance/rotation.py) can move it to the newest one.
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
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from compliance.config import Settings
from compliance.errors import ConfigError, IntegrityError, ValidationError

log = logging.getLogger("gdpr.keyring")

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
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
        return sealed_prefix(self.newest_id) + nonce + body

    def unseal(self, sealed: bytes, aad: bytes = b"") -> bytes:
        """The plaintext of a `seal`ed value, opened with the key it names."""
        kid = sealed_key_id(sealed)
        start = 1 + len(kid)
        if len(sealed) < start + NONCE_BYTES + TAG_BYTES:
            raise IntegrityError("sealed value is truncated; it cannot be opened")
        nonce, body = sealed[start : start + NONCE_BYTES], sealed[start + NONCE_BYTES :]
        try:
            return AESGCM(self.key(kid)).decrypt(nonce, body, kid.encode() + b"|" + aad)
        except InvalidTag as exc:
            raise IntegrityError(
                "sealed value failed authentication; wrong key or tampered"
            ) from exc

    def seal_local(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt short-lived state that must outlive a key rotation (a run's checkpoint)
        under a key derived from the pseudonym key, which is never rotated: nonce|body."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self._local_key()).encrypt(nonce, plaintext, b"local|" + aad)

    def open_local(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext of a `seal_local`ed value."""
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        try:
            return AESGCM(self._local_key()).decrypt(nonce, body, b"local|" + aad)
        except InvalidTag as exc:
            raise IntegrityError("sealed state failed authentication; tampered") from exc

    def _local_key(self) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"gdpr local")
        return hkdf.derive(self.pseudonym_key)

    def reseal(self, sealed: bytes, aad: bytes = b"") -> bytes:
        """`sealed` sealed again with the newest key (same associated data); a value the
        newest key sealed already is returned unchanged, so sealing twice changes nothing."""
        if sealed_key_id(sealed) == self.newest_id:
            return sealed
        return self.seal(self.unseal(sealed, aad), aad)


def sealed_prefix(key_id: str) -> bytes:
    """The bytes every value sealed with `key_id` starts with (length byte, key id)."""
    kid = key_id.encode()
    return bytes([len(kid)]) + kid


def sealed_key_id(sealed: bytes) -> str:
    """The id of the key that sealed `sealed` (read from its first bytes, no key needed)."""
    if not sealed or len(sealed) < 1 + sealed[0]:
        raise IntegrityError("sealed value is truncated; it names no key")
    try:
        return sealed[1 : 1 + sealed[0]].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("sealed value names no readable key id; it was modified") from None


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


def load_keyring(settings: Settings, *, allow_development: bool = False) -> Keyring:
    """The keyring for these settings; a development keyring when none is configured.

    Outside the embedded mode an unconfigured keyring is a `ConfigError`, unless
    `allow_development` (the services' ``--insecure-dev-keys``) asks for the development
    keyring anyway; see `refuse_development_keys`."""
    text = settings.keys
    origin = "GDPR_KEYS"
    if not text and settings.keys_file:
        origin = settings.keys_file
        try:
            text = Path(settings.keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read keys file {settings.keys_file}: {exc}") from exc
    if not text:
        if not settings.embedded and not allow_development:
            raise ConfigError("no keys configured; set GDPR_KEYS (see `gdpr keys generate`)")
        return _development_keyring(settings.home)
    keys = parse_keys(text, origin)
    if not keys:
        raise ConfigError(f"{origin}: no keys found")
    if not settings.pseudonym_key:
        raise ConfigError("GDPR_PSEUDONYM_KEY is not set; generate one with `gdpr keys generate`")
    return Keyring(keys, list(keys)[-1], _decode_pseudonym_key(settings.pseudonym_key))


def refuse_development_keys(settings: Settings, keyring: Keyring, allow: bool) -> None:
    """Refuse (`ConfigError`) to run a worker or the download service on development keys
    when the control database is PostgreSQL: a shared installation whose keys sit in a
    file under GDPR_HOME, or were copied from it into GDPR_KEYS. `allow` (the services'
    ``--insecure-dev-keys``) accepts them with a warning. Any other keyring passes."""
    if not _is_postgresql(settings.control_url) or not uses_development_keys(settings, keyring):
        return
    if allow:
        log.warning("keyring.development.allowed: NOT FOR PRODUCTION, set GDPR_KEYS")
        return
    raise ConfigError(
        "development keys must not protect a PostgreSQL control database: set GDPR_KEYS and "
        "GDPR_PSEUDONYM_KEY (`gdpr keys generate`), or pass --insecure-dev-keys to accept them"
    )


def uses_development_keys(settings: Settings, keyring: Keyring) -> bool:
    """Whether `keyring` is the development keyring, or holds a key of the development
    keyring file under `settings.home` (copied into GDPR_KEYS)."""
    if keyring.development:
        return True
    path = settings.home / DEV_KEYRING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        dev_keys = set(parse_keys(data["keys"], str(path)).values())
        dev_keys.add(_decode_pseudonym_key(data["pseudonym_key"]))
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return False  # no development keyring here (or not one this code wrote)
    return bool(dev_keys & {*keyring.keys.values(), keyring.pseudonym_key})


def _is_postgresql(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in {"postgresql", "postgres"}


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
