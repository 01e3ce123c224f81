"""The export package: a streamed ZIP (ZIP64) of everything held about one subject.

Layout: ``index.html`` (for people), ``data/<source>/<collection>.json`` and ``.csv``
(for machines and spreadsheets), ``files/<source>/<path>`` and ``manifest.json`` (per-file
sha256, sizes and row counts). Nothing is held whole in memory and no plaintext touches
the disk: rows go straight into their ZIP entry; the second pass the CSV needs, and the
manifest's file list, come from an `EncryptedSpool`. The index is written last, from what
`IndexBuilder` kept on the way: counts and each table's first rows as a bounded preview
(`exporters.preview`), read ahead of the JSON entry and then passed on to it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zipfile
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from compliance.sources.base import ExportItem, FileItem, RowsItem
from exporters import writers
from exporters.index import IndexBuilder, render_index
from exporters.preview import take_preview
from exporters.spool import EncryptedSpool
from exporters.tables import TableEncoder

FORMAT = "gdpr-export"
FORMAT_VERSION = 1
FLUSH_AT = 256 * 1024
# zlib level for JSON, CSV and HTML: level 1 deflates typical row text about twice as fast
# as the default (6) for about 8% more bytes; the export is CPU-bound, not size-bound.
DEFLATE_LEVEL = 1


class _Sink:
    """A write-only, non-seekable file: zipfile streams into it, we drain it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.pending = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.pending += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts, self.pending = [], 0
        return out


def write_package(
    items: Iterable[ExportItem],
    *,
    request_id: uuid.UUID | str,
    generated_at: datetime,
    subject_label: str = "",
    controller: str = "",
) -> Iterator[bytes]:
    """Stream the ZIP bytes of a package built from `items` (rows and files)."""
    with _PackageWriter(generated_at) as writer:
        for item in items:
            if isinstance(item, RowsItem):
                yield from writer.add_rows(item)
            else:
                yield from writer.add_file(item)
        yield from writer.finish(str(request_id), subject_label, controller)


class _PackageWriter:
    def __init__(self, generated_at: datetime) -> None:
        self.generated_at = generated_at
        g = generated_at
        self.stamp = (g.year, g.month, g.day, g.hour, g.minute, g.second)
        self.sink = _Sink()
        self.zip = zipfile.ZipFile(self.sink, "w", zipfile.ZIP_DEFLATED, allowZip64=True)  # type: ignore[call-overload]
        self.manifest = EncryptedSpool()
        self.index = IndexBuilder()
        self.names: set[str] = set()

    def __enter__(self) -> _PackageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.manifest.close()

    def add_rows(self, item: RowsItem) -> Iterator[bytes]:
        base = f"data/{writers.safe_segment(item.source)}/{writers.safe_segment(item.collection)}"
        json_name = self._unique(base + ".json")
        csv_name = self._unique(base + ".csv")
        preview, rows = take_preview(item.rows, self.index.budget)
        table = TableEncoder()
        try:
            done = yield from self._entry(json_name, table.json_pieces(rows))
            self._note(json_name, done, item.source, rows=table.rows)
            done = yield from self._entry(csv_name, table.csv_pieces())
        finally:
            table.close()
        self._note(csv_name, done, item.source, rows=table.rows)
        self.index.add_rows(item, table.rows, json_name, csv_name, preview)

    def add_file(self, item: FileItem) -> Iterator[bytes]:
        folder = writers.safe_segment(item.source)
        name = self._unique(f"files/{folder}/{writers.safe_path(item.path)}")
        done = yield from self._entry(name, item.chunks(), stored=True)
        self._note(name, done, item.source)
        self.index.add_file(item, done[0])

    def finish(self, request_id: str, subject_label: str, controller: str) -> Iterator[bytes]:
        page = render_index(
            self.index.sections(),
            request_id=request_id,
            generated_at=self.generated_at,
            subject_label=subject_label,
            controller=controller,
        )
        pieces = (piece.encode() for piece in page)
        done = yield from self._entry(self._unique("index.html"), pieces)
        self._note("index.html", done, "")
        yield from self._entry("manifest.json", self._manifest(request_id))
        self.zip.close()
        yield self.sink.take()

    def _manifest(self, request_id: str) -> Iterator[bytes]:
        head = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "request_id": request_id,
            "generated_at": self.generated_at.isoformat(),
        }
        yield json.dumps(head, indent=1)[:-2].encode() + b',\n "files": '
        yield from writers.json_array(self.manifest.lines())
        yield b"}\n"

    def _entry(
        self, name: str, pieces: Iterable[bytes], stored: bool = False
    ) -> Generator[bytes, None, tuple[int, str]]:
        """Stream one ZIP entry; returns its uncompressed size and sha256."""
        info = zipfile.ZipInfo(name, date_time=self.stamp)
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        # ZipFile.open(ZipInfo) reads the level from here (compress_level from 3.13 on).
        setattr(info, "_compresslevel", None if stored else DEFLATE_LEVEL)  # noqa: B010
        info.external_attr = 0o644 << 16
        digest = hashlib.sha256()
        size = 0
        with self.zip.open(info, mode="w", force_zip64=True) as entry:
            for piece in _batched(pieces):
                entry.write(piece)
                digest.update(piece)
                size += len(piece)
                if self.sink.pending >= FLUSH_AT:
                    yield self.sink.take()
        yield self.sink.take()
        return size, digest.hexdigest()

    def _note(self, name: str, done: tuple[int, str], source: str, **extra: Any) -> None:
        size, sha = done
        entry: Mapping[str, Any] = {"path": name, "size": size, "sha256": sha, **extra}
        if source:
            entry = {**entry, "source": source}
        self.manifest.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")

    def _unique(self, name: str) -> str:
        candidate, number = name, 1
        stem, dot, suffix = name.rpartition(".")
        while candidate in self.names or candidate == "manifest.json":
            number += 1
            plain = not dot or "/" in suffix
            candidate = f"{name}-{number}" if plain else f"{stem}-{number}.{suffix}"
        self.names.add(candidate)
        return candidate


def _batched(pieces: Iterable[bytes], at_least: int = 64 * 1024) -> Iterator[bytes]:
    """Join small pieces (one JSON row each) into blocks; large pieces pass through."""
    held: list[bytes] = []
    count = 0
    for piece in pieces:
        if not held and len(piece) >= at_least:
            yield piece
            continue
        held.append(piece)
        count += len(piece)
        if count >= at_least:
            yield b"".join(held)
            held, count = [], 0
    if held:
        yield b"".join(held)
