"""The export package: layout, exact machine-readable values, readable index, flat memory."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tracemalloc
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from compliance.sources.base import Art15, ExportItem, FileItem, RowsItem
from exporters.package import write_package
from exporters.spool import EncryptedSpool

NOW = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
REQUEST = uuid.UUID("00000000-0000-4000-8000-000000000001")
ACCOUNT = Art15(
    description="Your account",
    purpose="To provide the service you signed up for",
    legal_basis="Contract (Art. 6(1)(b))",
    recipients=("Payment processor",),
    retention="Until one year after you close your account",
)


def build(items: list[ExportItem]) -> zipfile.ZipFile:
    blob = b"".join(write_package(items, request_id=REQUEST, generated_at=NOW))
    return zipfile.ZipFile(io.BytesIO(blob))


def sample_items() -> list[ExportItem]:
    rows = [
        {
            "id": 1,
            "email": "ada@example.com",
            "balance": Decimal("10.10"),
            "born": date(1815, 12, 10),
        },
        {"id": 2, "email": "ada@example.com", "avatar": b"\x89PNG", "tags": ["a", "b"]},
    ]
    png = b"\x89PNG" + bytes(range(256)) * 10
    return [
        RowsItem("app", "users", iter(rows), ACCOUNT),
        FileItem("uploads", "avatars/1/me.png", lambda: iter([png]), len(png)),
    ]


def test_package_holds_index_data_files_and_a_manifest_that_matches() -> None:
    package = build(sample_items())
    assert set(package.namelist()) == {
        "index.html",
        "manifest.json",
        "data/app/users.json",
        "data/app/users.csv",
        "files/uploads/avatars/1/me.png",
    }
    manifest = json.loads(package.read("manifest.json"))
    assert manifest["request_id"] == str(REQUEST)
    assert manifest["format_version"] == 1
    assert manifest["generated_at"] == NOW.isoformat()
    by_path = {entry["path"]: entry for entry in manifest["files"]}
    assert set(by_path) == set(package.namelist()) - {"manifest.json"}
    for path, entry in by_path.items():
        data = package.read(path)
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert by_path["data/app/users.json"]["rows"] == 2
    assert package.testzip() is None


def test_json_keeps_dates_iso_decimals_exact_and_bytes_base64() -> None:
    rows = json.loads(build(sample_items()).read("data/app/users.json"))
    assert rows[0] == {
        "id": 1,
        "email": "ada@example.com",
        "balance": "10.10",
        "born": "1815-12-10",
    }
    assert rows[1]["avatar"] == "iVBORw=="
    assert rows[1]["tags"] == ["a", "b"]


def test_csv_has_every_column_seen_and_defuses_spreadsheet_formulas() -> None:
    rows = [{"id": 1, "note": '=HYPERLINK("x")'}, {"id": 2, "city": "Zürich"}]
    package = build([RowsItem("app", "notes", iter(rows))])
    text = package.read("data/app/notes.csv").decode("utf-8-sig")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["id", "note", "city"]
    assert table[1] == ["1", '\'=HYPERLINK("x")', ""]
    assert table[2] == ["2", "", "Zürich"]


def test_index_explains_purpose_basis_recipients_and_retention_with_escaping() -> None:
    hostile = Art15(description="<script>alert(1)</script>", purpose="Support")
    items = [*sample_items(), RowsItem("crm", "tickets", iter([{"id": 1}]), hostile)]
    page = build(items).read("index.html").decode()
    for fact in (
        ACCOUNT.purpose,
        "Contract (Art. 6(1)(b))",
        "Payment processor",
        ACCOUNT.retention,
        "data/app/users.csv",
    ):
        assert fact in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


def test_hostile_paths_stay_inside_the_package_and_duplicates_get_new_names() -> None:
    items: list[ExportItem] = [
        FileItem("s", "../../etc/passwd", lambda: iter([b"a"])),
        FileItem("s", "etc/passwd", lambda: iter([b"b"])),
        RowsItem("../x", "t", iter([{"id": 1}])),
    ]
    names = build(items).namelist()
    assert "files/s/etc/passwd" in names and "files/s/etc/passwd-2" in names
    assert all(not part.startswith(".") for name in names for part in name.split("/"))


def test_a_subject_with_no_data_gets_a_package_that_says_so() -> None:
    package = build([])
    assert "We hold no personal data" in package.read("index.html").decode()


def test_bytes_leave_before_the_items_are_exhausted() -> None:
    def items() -> Iterator[ExportItem]:
        yield FileItem("s", "big.bin", lambda: iter([b"x" * 65536] * 64))
        raise RuntimeError("second item never arrives")

    stream = write_package(items(), request_id=REQUEST, generated_at=NOW)
    first = next(stream)
    assert first.startswith(b"PK\x03\x04")
    with pytest.raises(RuntimeError):
        list(stream)


def test_memory_stays_flat_for_a_large_subject() -> None:
    def rows() -> Iterator[dict[str, object]]:
        for i in range(30_000):
            yield {"id": i, "text": f"message number {i} " * 12, "at": NOW}

    def chunks() -> Iterator[bytes]:
        for i in range(160):
            yield bytes([i % 251]) * (1 << 20)

    items = [RowsItem("app", "messages", rows()), FileItem("s", "video.bin", chunks)]
    tracemalloc.start()
    total = 0
    for piece in write_package(items, request_id=REQUEST, generated_at=NOW):
        total += len(piece)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total > 160 * (1 << 20)
    assert peak < 12 * (1 << 20), f"peak {peak / 2**20:.1f} MiB"


def test_the_spool_never_writes_plaintext_to_disk() -> None:
    marker = b"ada@example.com "
    with EncryptedSpool(memory_limit=0) as spool:
        for _ in range(40_000):
            spool.write(marker)
        on_disk = spool._file
        assert on_disk is not None
        on_disk.seek(0)
        assert marker not in on_disk.read()
        assert b"".join(spool.read()) == marker * 40_000


def test_index_puts_rows_shared_with_others_after_those_about_the_subject() -> None:
    address = Art15(description="Addresses you gave us")
    items: list[ExportItem] = [
        RowsItem("shop", "addresses.shared", iter([{"id": 10}]), address, shared=True),
        RowsItem("shop", "addresses", iter([{"id": 11}]), address),
    ]
    package = build(items)
    page = package.read("index.html").decode()
    about_you = page.index("data/shop/addresses.csv")
    shared = page.index("Shared with other people")
    assert about_you < shared < page.index("data/shop/addresses.shared.csv")
    assert "Addresses you gave us (shared with others)" in page
    assert json.loads(package.read("data/shop/addresses.shared.json")) == [{"id": 10}]
