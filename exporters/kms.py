"""Wrap export data keys with AWS KMS (any KMS-compatible endpoint).

Key ids of KMS-wrapped packages carry a ``kms:`` prefix in the file header, so a reader
knows to ask KMS rather than the keyring (keyring ids cannot contain a colon).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from compliance.config import Settings
from compliance.errors import ConfigError, IntegrityError, KeyServiceUnavailableError

PREFIX = "kms:"
_CONTEXT = {"purpose": "gdpr-export-data-key"}
_INTEGRITY = {"InvalidCiphertextException", "IncorrectKeyException"}
_RETRYABLE = {"ThrottlingException", "KMSInternalException", "DependencyTimeoutException"}


@dataclass(frozen=True)
class KmsWrapper:
    """A `KeyWrapper` whose key-encryption key lives in KMS."""

    client: Any
    kms_key: str

    @property
    def key_id(self) -> str:
        return PREFIX + self.kms_key

    def wrap(self, data_key: bytes) -> bytes:
        with _translated(self.kms_key):
            reply = self.client.encrypt(
                KeyId=self.kms_key, Plaintext=data_key, EncryptionContext=_CONTEXT
            )
        return bytes(reply["CiphertextBlob"])

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        if not key_id.startswith(PREFIX):
            raise IntegrityError(f"key id '{key_id}' is not a KMS key id")
        kms_key = key_id[len(PREFIX) :]
        with _translated(kms_key):
            reply = self.client.decrypt(
                CiphertextBlob=wrapped, KeyId=kms_key, EncryptionContext=_CONTEXT
            )
        return bytes(reply["Plaintext"])


def kms_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3})
    return boto3.client(
        "kms",
        endpoint_url=settings.kms_endpoint_url or None,
        region_name=settings.s3_region,
        config=config,
    )


def kms_wrapper(settings: Settings, kms_key: str | None = None) -> KmsWrapper:
    return KmsWrapper(kms_client(settings), kms_key or settings.kms_key_id)


@contextmanager
def _translated(kms_key: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _INTEGRITY:
            raise IntegrityError(
                "KMS refused to unwrap the data key: the header was modified or the key differs"
            ) from exc
        if code in _RETRYABLE or status >= 500:
            raise KeyServiceUnavailableError(f"KMS unavailable ({code}); retry later") from exc
        raise ConfigError(
            f"KMS refused key '{kms_key}' ({code}); check GDPR_KMS_KEY_ID and its key policy"
        ) from exc
    except BotoCoreError as exc:
        raise KeyServiceUnavailableError(
            f"KMS unreachable ({type(exc).__name__}); check GDPR_KMS_ENDPOINT_URL"
        ) from exc
