"""Re-wrapping a package's data key: the same data key under a new key id and fresh nonces,
readable without the old key, and a tampered package refused and left as it was."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from compliance.db import Database, utcnow
from compliance.errors import IntegrityError
from compliance.keyring import Keyring
from compliance.models import DsrRequest, ExportPackage
from compliance.rotation import PackageOutcome, PackageRef
from exporters.cleanup import purge_expired_packages
from exporters.crypto import (
    SEGMENT_SIZE,
    TAG_BYTES,
    decrypt_stream,
    encrypt_stream,
    keyring_wrapper,
    read_header,
)
from exporters.rewrap import PackageRewrapper, peek_header, rewrap_stream
from exporters.storage import ObjectStorage

SEG = SEGMENT_SIZE + TAG_BYTES
OLD, NEW = os.urandom(32), os.urandom(32)
PSEUDONYM = os.urandom(32)
BEFORE = Keyring({"k1": OLD}, "k1", PSEUDONYM)
BOTH = Keyring({"k1": OLD, "2026-02": NEW}, "2026-02", PSEUDONYM)
AFTER = Keyring({"2026-02": NEW}, "2026-02", PSEUDONYM)  # the old key removed


def pieces(blob: bytes, size: int) -> Iterator[bytes]:
    return (blob[i : i + size] for i in range(0, len(blob), size))


def encrypt(data: bytes, keyring: Keyring = BEFORE) -> bytes:
    return b"".join(encrypt_stream(pieces(data, 10_000), keyring_wrapper(keyring)))


def decrypt(blob: bytes, keyring: Keyring = AFTER) -> bytes:
    return b"".join(decrypt_stream(pieces(blob, 7_777), keyring_wrapper(keyring)))


def rewrap(blob: bytes, piece: int = 9_999, keyring: Keyring = BOTH) -> bytes:
    wrapper = keyring_wrapper(keyring)
    return b"".join(rewrap_stream(pieces(blob, piece), wrapper, wrapper))


def data_key(blob: bytes, keyring: Keyring) -> bytes:
    header = read_header([blob])
    return keyring_wrapper(keyring).unwrap(header.key_id, header.wrapped_key)


@pytest.mark.parametrize(
    "size", [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE + 5]
)
@pytest.mark.parametrize("piece", [1_000, SEG, 1024 * 1024])
def test_a_rewrapped_package_decrypts_without_the_old_key(size: int, piece: int) -> None:
    data = os.urandom(size)
    rewrapped = rewrap(encrypt(data), piece)
    assert read_header([rewrapped]).key_id == "2026-02"
    assert decrypt(rewrapped) == data
    with pytest.raises(IntegrityError, match="'2026-02' is not in the keyring"):
        decrypt(rewrapped, BEFORE)


def test_rewrapping_keeps_the_data_key_and_moves_every_segment_to_fresh_nonces() -> None:
    blob = encrypt(os.urandom(2 * SEGMENT_SIZE + 7))
    rewrapped = rewrap(blob)
    assert data_key(rewrapped, AFTER) == data_key(blob, BEFORE)
    old, new = read_header([blob]), read_header([rewrapped])
    assert new.nonce_prefix != old.nonce_prefix
    assert new.segment_size == old.segment_size
    start_old, start_new = len(old.raw) + TAG_BYTES, len(new.raw) + TAG_BYTES
    old_segments = list(pieces(blob[start_old:], SEG))
    new_segments = list(pieces(rewrapped[start_new:], SEG))
    assert [len(s) for s in new_segments] == [len(s) for s in old_segments]
    for before, after in zip(old_segments, new_segments, strict=True):
        assert before[:32] != after[:32]  # other keystream, so other ciphertext


def test_a_package_rewrapped_twice_opens_with_only_the_last_key() -> None:
    third = Keyring({"2026-02": NEW, "2026-03": os.urandom(32)}, "2026-03", PSEUDONYM)
    data = os.urandom(SEGMENT_SIZE + 3)
    twice = rewrap(rewrap(encrypt(data)), keyring=third)
    only = Keyring({"2026-03": third.keys["2026-03"]}, "2026-03", PSEUDONYM)
    assert decrypt(twice, only) == data


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]


def test_a_tampered_segment_is_refused_and_nothing_after_it_comes_out() -> None:
    blob = encrypt(os.urandom(3 * SEGMENT_SIZE + 5))
    start = len(read_header([blob]).raw) + TAG_BYTES
    out: list[bytes] = []
    wrapper = keyring_wrapper(BOTH)
    with pytest.raises(IntegrityError, match="segment 1 of the package failed"):
        for piece in rewrap_stream(pieces(flip(blob, start + SEG + 100), SEG), wrapper, wrapper):
            out.append(piece)
    assert len(out) == 2  # the header, segment 0


@pytest.mark.parametrize(
    ("mangle", "says"),
    [
        (lambda b, h: b[:-1], "segment 3 of the package failed"),
        (lambda b, h: b[: h + 3 * SEG], "ends after segment 2 without a final one"),
        (lambda b, h: b[: h + 2 * SEG], "ends after segment 1 without a final one"),
        (lambda b, h: b + b"x", "segment 3 of the package failed"),
        (lambda b, h: flip(b, h - 1), "header of the package failed"),
        (lambda b, h: flip(b, h - TAG_BYTES - 3), "does not open with key 'k1'"),
        (lambda b, h: b[: h - 5], "truncated inside its header"),
    ],
    ids=["cut-final", "no-final", "cut-at-boundary", "appended", "header-tag", "wrapped", "head"],
)
def test_truncated_or_modified_packages_are_refused(mangle, says: str) -> None:  # type: ignore[no-untyped-def]
    blob = encrypt(os.urandom(3 * SEGMENT_SIZE + 5))
    start = len(read_header([blob]).raw) + TAG_BYTES
    with pytest.raises(IntegrityError, match=says):
        rewrap(mangle(blob, start))


def test_peek_header_gives_the_header_and_the_whole_stream_back() -> None:
    blob = encrypt(os.urandom(SEGMENT_SIZE))
    header, stream = peek_header(pieces(blob, 10))
    assert header.key_id == "k1"
    assert b"".join(stream) == blob


# --- a stored package ---------------------------------------------------------------------


def store_package(db: Database, storage: ObjectStorage, data: bytes) -> PackageRef:
    now = utcnow()
    request_id = uuid.uuid4()
    key = f"exports/{request_id}.zip.enc"
    blob = encrypt(data)
    storage.upload(key, [blob])
    with db.session() as session:
        session.add(
            DsrRequest(
                id=request_id,
                kind="export",
                status="completed",
                subject="ps_" + uuid.uuid4().hex,
                submitted_by="alice",
                submitted_at=now,
                due_at=now + timedelta(days=30),
                updated_at=now,
            )
        )
        session.flush()
        row = ExportPackage(
            request_id=request_id,
            object_key=key,
            size=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            key_id="k1",
            created_at=now,
            expires_at=now + timedelta(days=30),
        )
        session.add(row)
        session.flush()
        return PackageRef(row.id, request_id, key, "k1", row.expires_at)


def rewrapper(db: Database, storage: ObjectStorage) -> PackageRewrapper:
    return PackageRewrapper(db, storage, keyring_wrapper(BOTH), keyring_wrapper(BOTH))


def row_of(db: Database, ref: PackageRef) -> ExportPackage:
    with db.session() as session:
        return session.get_one(ExportPackage, ref.id)


def stored(storage: ObjectStorage, ref: PackageRef) -> bytes:
    return b"".join(storage.download(ref.object_key))


def test_a_stored_package_is_rewrapped_and_its_row_follows(
    db: Database, storage: ObjectStorage
) -> None:
    data = os.urandom(2 * SEGMENT_SIZE + 11)
    ref = store_package(db, storage, data)
    assert rewrapper(db, storage).rewrap(ref) is PackageOutcome.REWRAPPED
    blob = stored(storage, ref)
    row = row_of(db, ref)
    assert (row.key_id, row.size, row.sha256) == (
        "2026-02",
        len(blob),
        hashlib.sha256(blob).hexdigest(),
    )
    assert decrypt(blob) == data


def test_a_package_uploaded_by_a_run_that_stopped_is_only_brought_on_record(
    db: Database, storage: ObjectStorage
) -> None:
    ref = store_package(db, storage, os.urandom(SEGMENT_SIZE))
    storage.upload(ref.object_key, [rewrap(stored(storage, ref))])  # the row still says k1
    before = stored(storage, ref)
    assert rewrapper(db, storage).rewrap(ref) is PackageOutcome.RECONCILED
    assert stored(storage, ref) == before  # not wrapped a second time
    row = row_of(db, ref)
    assert (row.key_id, row.sha256) == ("2026-02", hashlib.sha256(before).hexdigest())


def test_a_package_deleted_while_it_was_rewrapped_loses_the_new_object_too(
    db: Database, storage: ObjectStorage
) -> None:
    ref = store_package(db, storage, os.urandom(1000))

    class DeletedMeanwhile:
        """Storage where the expiry sweep deletes the package during the upload."""

        def __getattr__(self, name: str) -> object:
            return getattr(storage, name)

        def upload(self, key: str, chunks: Iterable[bytes]) -> int:
            written = storage.upload(key, chunks)
            with db.session() as session:
                session.execute(
                    update(ExportPackage)
                    .where(ExportPackage.id == ref.id)
                    .values(deleted_at=utcnow())
                )
            return written

    outcome = rewrapper(db, DeletedMeanwhile()).rewrap(ref)  # type: ignore[arg-type]
    assert outcome is PackageOutcome.GONE
    assert not storage.exists(ref.object_key)
    assert row_of(db, ref).key_id == "k1"


class ReadEarlier:
    """Storage as a rotation that downloaded `blob` before the sweep's delete sees it."""

    def __init__(self, storage: ObjectStorage, blob: bytes) -> None:
        self.storage, self.blob = storage, blob

    def __getattr__(self, name: str) -> object:
        return getattr(self.storage, name)

    def download(self, key: str) -> Iterator[bytes]:
        return iter([self.blob])


def test_a_rotation_recorded_between_the_expiry_sweeps_delete_and_its_mark_leaves_no_object(
    db: Database, storage: ObjectStorage
) -> None:
    ref = store_package(db, storage, os.urandom(1000))
    earlier = stored(storage, ref)
    outcomes: list[PackageOutcome] = []

    class RotatedMeanwhile:
        """Storage where that rotation uploads and records its re-wrapped copy just after
        the sweep's first delete, before the sweep marks the row."""

        def __getattr__(self, name: str) -> object:
            return getattr(storage, name)

        def delete(self, key: str) -> None:
            storage.delete(key)
            if not outcomes:
                late = replace(rewrapper(db, storage), storage=ReadEarlier(storage, earlier))
                outcomes.append(late.rewrap(ref))

    with db.session() as session:
        session.execute(
            update(ExportPackage).where(ExportPackage.id == ref.id).values(expires_at=utcnow())
        )
    assert purge_expired_packages(db, RotatedMeanwhile(), utcnow()) == 1  # type: ignore[arg-type]
    assert outcomes == [PackageOutcome.REWRAPPED]  # the rotation recorded its copy
    assert not storage.exists(ref.object_key)  # and the sweep's second delete removed it
    assert row_of(db, ref).deleted_at is not None


def test_a_missing_object_is_reported_and_its_row_left_alone(
    db: Database, storage: ObjectStorage
) -> None:
    ref = store_package(db, storage, os.urandom(1000))
    storage.delete(ref.object_key)
    assert rewrapper(db, storage).rewrap(ref) is PackageOutcome.MISSING
    assert row_of(db, ref).key_id == "k1"


def test_a_tampered_stored_package_is_refused_and_stays_as_it_was(
    db: Database, storage: ObjectStorage
) -> None:
    ref = store_package(db, storage, os.urandom(3 * SEGMENT_SIZE))
    tampered = flip(stored(storage, ref), -100)
    storage.upload(ref.object_key, [tampered])
    with pytest.raises(IntegrityError, match="failed authentication"):
        rewrapper(db, storage).rewrap(ref)
    assert stored(storage, ref) == tampered
    assert row_of(db, ref).key_id == "k1"


def test_a_row_another_rotation_recorded_first_is_left_to_it(
    db: Database, storage: ObjectStorage
) -> None:
    ref = store_package(db, storage, os.urandom(1000))
    moved = replace(ref, key_id="k0")  # the row no longer says what this run read
    assert rewrapper(db, storage).rewrap(moved) is PackageOutcome.CHANGED
    assert storage.exists(ref.object_key)


@pytest.mark.s3
def test_a_package_in_several_s3_parts_is_read_while_its_replacement_goes_up(
    db: Database, s3_settings: object
) -> None:
    from exporters.s3 import PART_SIZE
    from exporters.storage import open_storage

    storage = open_storage(s3_settings)  # type: ignore[arg-type]
    data = os.urandom(2 * PART_SIZE + 5)
    ref = store_package(db, storage, data)
    assert rewrapper(db, storage).rewrap(ref) is PackageOutcome.REWRAPPED
    blob = stored(storage, ref)
    assert row_of(db, ref).sha256 == hashlib.sha256(blob).hexdigest()
    assert decrypt(blob) == data
