"""Envelope encryption: round trips, rotation, KMS, and every kind of tampering detected."""

from __future__ import annotations

import os
import struct

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.config import Settings
from compliance.errors import ConfigError, IntegrityError
from exporters.crypto import (
    SEGMENT_SIZE,
    TAG_BYTES,
    decrypt_sized,
    decrypt_stream,
    encrypt_stream,
    keyring_wrapper,
    plaintext_size,
    read_header,
    wrapper_for,
)
from tests.exporters.conftest import make_keyring

SEG = SEGMENT_SIZE + TAG_BYTES


def encrypt(data: bytes, wrapper: object, piece: int = 10_000) -> bytes:
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)]
    return b"".join(encrypt_stream(chunks, wrapper))  # type: ignore[arg-type]


def decrypt(blob: bytes, wrapper: object, piece: int = 7_777) -> bytes:
    chunks = (blob[i : i + piece] for i in range(0, len(blob), piece))
    return b"".join(decrypt_stream(chunks, wrapper))  # type: ignore[arg-type]


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """(header including its tag, ciphertext segments)."""
    header = read_header([blob])
    start = len(header.raw) + TAG_BYTES
    body = blob[start:]
    return blob[:start], [body[i : i + SEG] for i in range(0, len(body), SEG)]


@pytest.fixture
def wrapper():  # type: ignore[no-untyped-def]
    return keyring_wrapper(make_keyring("k1"))


@pytest.mark.parametrize(
    "size", [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE + 5]
)
def test_decrypt_returns_exactly_what_was_encrypted(wrapper, size: int) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(size)
    assert decrypt(encrypt(data, wrapper), wrapper) == data


@pytest.mark.parametrize(
    "size", [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE + 5]
)
def test_the_plaintext_size_follows_from_the_file_size_and_header(wrapper, size: int) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(size)
    blob = encrypt(data, wrapper)
    assert plaintext_size(read_header([blob]), len(blob)) == size
    pieces = [blob[i : i + 5000] for i in range(0, len(blob), 5000)]
    plain = decrypt_sized(pieces, wrapper, len(blob))
    assert plain.size == size
    assert b"".join(plain.chunks) == data


class NeverUnwraps:
    key_id = "k1"

    def wrap(self, data_key: bytes) -> bytes:
        raise AssertionError("not used")

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        raise AssertionError("the size is judged before any key is unwrapped")


def test_a_size_no_file_can_have_is_refused_before_decrypting(wrapper) -> None:  # type: ignore[no-untyped-def]
    head, segments = split(encrypt(os.urandom(3 * SEGMENT_SIZE + 10), wrapper))
    boundary = head + b"".join(segments[:2])  # the final segment dropped
    inside_a_tag = head + b"".join(segments[:2]) + segments[2][: TAG_BYTES - 1]
    for blob in (boundary, inside_a_tag, head[:-1]):
        with pytest.raises(IntegrityError, match="truncated"):
            decrypt_sized([blob], NeverUnwraps(), len(blob))


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=200_000), piece=st.integers(1, 100_000))
def test_round_trip_holds_for_any_chunking(data: bytes, piece: int) -> None:
    wrapper = keyring_wrapper(make_keyring("k1"))
    assert decrypt(encrypt(data, wrapper, piece), wrapper, piece) == data


def test_ciphertext_hides_the_plaintext_and_differs_each_time(wrapper) -> None:  # type: ignore[no-untyped-def]
    data = b"ada@example.com " * 10_000
    first, second = encrypt(data, wrapper), encrypt(data, wrapper)
    assert b"ada@example.com" not in first
    assert first != second


def test_new_packages_use_the_newest_key_and_old_ones_still_decrypt() -> None:
    old = make_keyring("k1")
    blob = encrypt(b"old package", keyring_wrapper(old))
    rotated = make_keyring("k2")
    rotated = type(old)({**old.keys, **rotated.keys}, "k2", old.pseudonym_key)
    new_wrapper = keyring_wrapper(rotated)
    assert read_header([encrypt(b"x", new_wrapper)]).key_id == "k2"
    assert decrypt(blob, new_wrapper) == b"old package"


def test_a_key_id_missing_from_the_keyring_is_named_in_the_error(wrapper) -> None:  # type: ignore[no-untyped-def]
    blob = encrypt(b"data", wrapper)
    with pytest.raises(IntegrityError, match="key id 'k1' is not in the keyring"):
        decrypt(blob, keyring_wrapper(make_keyring("other")))


def test_truncation_at_a_segment_boundary_is_detected(wrapper) -> None:  # type: ignore[no-untyped-def]
    head, segments = split(encrypt(os.urandom(3 * SEGMENT_SIZE + 10), wrapper))
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(head + b"".join(segments[:2]), wrapper)


def test_truncation_inside_a_segment_is_detected(wrapper) -> None:  # type: ignore[no-untyped-def]
    blob = encrypt(os.urandom(2 * SEGMENT_SIZE + 10), wrapper)
    with pytest.raises(IntegrityError, match=r"truncated|modified"):
        decrypt(blob[:-5], wrapper)
    with pytest.raises(IntegrityError, match="truncated inside its header"):
        decrypt(blob[:20], wrapper)


def test_appended_data_is_detected(wrapper) -> None:  # type: ignore[no-untyped-def]
    head, segments = split(encrypt(os.urandom(SEGMENT_SIZE + 10), wrapper))
    with pytest.raises(IntegrityError, match=r"segment 1 failed .* data appended"):
        decrypt(head + b"".join(segments) + segments[0], wrapper)
    with pytest.raises(IntegrityError, match=r"segment 1 failed .* data appended"):
        decrypt(head + b"".join(segments) + b"extra", wrapper)


def test_reordered_segments_are_detected(wrapper) -> None:  # type: ignore[no-untyped-def]
    head, segments = split(encrypt(os.urandom(3 * SEGMENT_SIZE + 10), wrapper))
    swapped = [segments[1], segments[0], *segments[2:]]
    with pytest.raises(IntegrityError, match="out of order: segment 1 found at position 0"):
        decrypt(head + b"".join(swapped), wrapper)


def test_a_bit_flip_stops_decryption_before_releasing_that_segment(wrapper) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * SEGMENT_SIZE + 10)
    blob = bytearray(encrypt(data, wrapper))
    head, _ = split(bytes(blob))
    blob[len(head) + 2 * SEG + 100] ^= 0x01
    released = bytearray()
    with pytest.raises(IntegrityError, match="segment 2 failed authentication"):
        for piece in decrypt_stream([bytes(blob)], wrapper):
            released += piece
    assert bytes(released) == data[: 2 * SEGMENT_SIZE]


def test_header_edits_are_detected(wrapper) -> None:  # type: ignore[no-untyped-def]
    blob = encrypt(os.urandom(1000), wrapper)
    size_edit = blob[:8] + struct.pack(">I", 32768) + blob[12:]
    with pytest.raises(IntegrityError, match="header was modified"):
        decrypt(size_edit, wrapper)
    prefix_edit = bytearray(blob)
    prefix_edit[13] ^= 0x80
    with pytest.raises(IntegrityError, match="header was modified"):
        decrypt(bytes(prefix_edit), wrapper)
    header = read_header([blob])
    wrapped_at = len(header.raw) - 3
    key_edit = bytearray(blob)
    key_edit[wrapped_at] ^= 0x01
    with pytest.raises(IntegrityError, match="wrapped data key does not open"):
        decrypt(bytes(key_edit), wrapper)


def test_a_file_that_is_not_an_export_is_refused(wrapper) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IntegrityError, match="not an encrypted gdpr export"):
        decrypt(b"PK\x03\x04" + os.urandom(100), wrapper)


@pytest.fixture
def kms_key(s3_endpoint: str) -> str:
    client = boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1")
    return str(client.create_key(Description="gdpr test")["KeyMetadata"]["KeyId"])


@pytest.mark.s3
def test_kms_wraps_the_data_key_and_the_keyring_setup_can_still_read_it(
    s3_settings: Settings, kms_key: str
) -> None:
    keyring = make_keyring("k1")
    kms_settings = s3_settings.with_overrides(kms_key_id=kms_key)
    blob = encrypt(b"kms wrapped", wrapper_for(kms_settings, keyring))
    assert read_header([blob]).key_id == f"kms:{kms_key}"
    assert decrypt(blob, wrapper_for(s3_settings, keyring)) == b"kms wrapped"
    assert read_header([encrypt(b"x", wrapper_for(s3_settings, keyring))]).key_id == "k1"


@pytest.mark.s3
def test_an_unknown_kms_key_is_a_configuration_error(s3_settings: Settings) -> None:
    settings_ = s3_settings.with_overrides(kms_key_id="00000000-0000-0000-0000-000000000000")
    with pytest.raises(ConfigError, match="KMS refused key"):
        encrypt(b"x", wrapper_for(settings_, make_keyring("k1")))


@pytest.mark.parametrize("length", [0, 4, 11, 12, 27])
def test_a_shortened_wrapped_key_is_an_integrity_error(wrapper, length: int) -> None:  # type: ignore[no-untyped-def]
    blob = encrypt(os.urandom(1000), wrapper)
    header = read_header([blob])
    length_at = len(header.raw) - len(header.wrapped_key) - 2
    edited = blob[:length_at] + struct.pack(">H", length) + blob[length_at + 2 :]
    with pytest.raises(IntegrityError, match="wrapped data key"):
        decrypt(edited, wrapper)
