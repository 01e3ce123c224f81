"""Key wrappers: the keyring (by key id, rotation) and the choice between it and KMS."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from compliance.config import Settings
from compliance.errors import IntegrityError
from compliance.keyring import Keyring
from exporters import kms

_AAD = b"gdpr-export-data-key\x00"
_NONCE = 12
_WRAPPED = _NONCE + 32 + 16  # nonce, data key, tag


@dataclass(frozen=True)
class KeyringWrapper:
    """Wraps with the keyring's newest key; unwraps with whichever key id a file names."""

    keyring: Keyring = field(repr=False)

    @property
    def key_id(self) -> str:
        return self.keyring.newest_id

    def wrap(self, data_key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        kek = AESGCM(self.keyring.key(self.key_id))
        return nonce + kek.encrypt(nonce, data_key, _AAD + self.key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        kek = AESGCM(self.keyring.key(key_id))
        try:
            if len(wrapped) != _WRAPPED:  # AESGCM raises ValueError on a short nonce
                raise InvalidTag
            return kek.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _AAD + key_id.encode())
        except InvalidTag:
            raise IntegrityError(
                f"the wrapped data key does not open with key '{key_id}': "
                "the header was modified or the keyring holds a different key under that id"
            ) from None


@dataclass(frozen=True)
class ChoosingWrapper:
    """Wraps with `primary`; unwraps KMS ids via KMS and all others via the keyring."""

    primary: Any  # KeyWrapper
    keyring: KeyringWrapper
    kms_factory: Callable[[], kms.KmsWrapper]

    @property
    def key_id(self) -> str:
        return str(self.primary.key_id)

    def wrap(self, data_key: bytes) -> bytes:
        return bytes(self.primary.wrap(data_key))

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        if key_id.startswith(kms.PREFIX):
            return self.kms_factory().unwrap(key_id, wrapped)
        return self.keyring.unwrap(key_id, wrapped)


def keyring_wrapper(keyring: Keyring) -> KeyringWrapper:
    """New packages use the newest key; every key id still in the keyring unwraps."""
    return KeyringWrapper(keyring)


def wrapper_for(settings: Settings, keyring: Keyring) -> ChoosingWrapper:
    """KMS when `settings.kms_key_id` is set, else the keyring; both can always unwrap."""
    local = KeyringWrapper(keyring)

    def make_kms() -> kms.KmsWrapper:
        return kms.kms_wrapper(settings)

    primary: Any = make_kms() if settings.kms_key_id else local
    return ChoosingWrapper(primary, local, make_kms)
