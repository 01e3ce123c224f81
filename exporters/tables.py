"""One pass over a table's rows that yields its JSON entry and keeps its CSV twin.

The rows can be read only once, and a streamed ZIP writes one entry after the other, so
the CSV must wait for the JSON. Rows are encoded in batches, column by column
(`exporters.cells`): the JSON lines are yielded at once and the CSV records go into an
`EncryptedSpool` already encoded, so the CSV entry is a plain replay. CSV columns are
every field seen in any row; when a later row brings a new column, records spooled
before it are narrower, and the replay pads them with empty cells (`widened`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from json.encoder import encode_basestring
from typing import Any

from exporters.cells import column_cells
from exporters.spool import EncryptedSpool

BATCH_BYTES = 256 * 1024
MAX_BATCH_ROWS = 4096
FIRST_BATCH_ROWS = 64


class TableEncoder:
    """Encode one table: `json_pieces(rows)` first, then `csv_pieces()` once."""

    def __init__(self) -> None:
        self.columns: dict[str, None] = {}
        self.rows = 0
        self._spool = EncryptedSpool()
        self._widths: list[list[int]] = []  # [width, bytes] runs of spooled CSV records
        self._json_bytes = 0

    def close(self) -> None:
        self._spool.close()

    def json_pieces(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
        """The JSON array (one row per line), in blocks; records the CSV on the way."""
        source = iter(rows)
        yield b"["
        sep = "\n"
        while batch := list(islice(source, self._batch_size())):
            lines = [line for keys, run in _runs(batch) for line in self._encode(keys, run)]
            block = (sep + ",\n".join(lines)).encode()
            sep = ",\n"
            self.rows += len(batch)
            self._json_bytes += len(block)
            yield block
        yield b"\n]\n"

    def csv_pieces(self) -> Iterator[bytes]:
        """The CSV entry: BOM and header, then every record padded to the final width."""
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerow(list(self.columns))
        yield b"\xef\xbb\xbf" + out.getvalue().encode()
        final = len(self.columns)
        cursor = _Cursor(self._spool.read())
        for width, size in self._widths:
            part = cursor.take(size)
            yield from part if width == final else widened(part, width, final)

    def _batch_size(self) -> int:
        if not self.rows:
            return FIRST_BATCH_ROWS
        per_row = max(1, self._json_bytes // self.rows)
        return max(1, min(MAX_BATCH_ROWS, BATCH_BYTES // per_row))

    def _encode(self, keys: tuple[str, ...], run: Sequence[Mapping[str, Any]]) -> list[str]:
        if keys and not all(type(key) is str for key in keys):
            named = [{k if type(k) is str else str(k): v for k, v in row.items()} for row in run]
            return self._encode(tuple(named[0]), named)
        self.columns.update(dict.fromkeys(keys))
        values = list(zip(*[tuple(row.values()) for row in run], strict=True))
        cells = [column_cells(column) for column in values]
        template = "{" + ",".join(encode_basestring(k).replace("%", "%%") + ":%s" for k in keys)
        lines = list(map((template + "}").__mod__, zip(*[c[0] for c in cells], strict=True)))
        self._spool_csv(keys, [c[1] for c in cells], len(run))
        return lines or ["{}"] * len(run)

    def _spool_csv(self, keys: tuple[str, ...], cells: list[list[str]], count: int) -> None:
        if keys != tuple(self.columns):  # a subset, or another order: place by name
            where = dict(zip(keys, cells, strict=True))
            blank = [""] * count
            cells = [where.get(name, blank) for name in self.columns]
        if len(cells) > 1:
            records = list(map(",".join, zip(*cells, strict=True)))
        elif cells:  # one column: csv.writer quotes a lone empty field
            records = [cell or '""' for cell in cells[0]]
        else:
            records = [""] * count
        data = ("\r\n".join(records) + "\r\n").encode()
        self._spool.write(data)
        width = len(cells)
        if self._widths and self._widths[-1][0] == width:
            self._widths[-1][1] += len(data)
        else:
            self._widths.append([width, len(data)])


def _runs(
    batch: list[Mapping[str, Any]],
) -> Iterator[tuple[tuple[str, ...], list[Mapping[str, Any]]]]:
    """Split a batch into runs of rows with the same keys in the same order."""
    keys = list(map(tuple, batch))
    if keys.count(keys[0]) == len(keys):
        yield keys[0], batch
        return
    start = 0
    for at in range(1, len(batch) + 1):
        if at == len(batch) or keys[at] != keys[start]:
            yield keys[start], batch[start:at]
            start = at


class _Cursor:
    """Reads the spool's blocks in consecutive spans of exact sizes."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._held = b""

    def take(self, size: int) -> Iterator[bytes]:
        while size > 0:
            if not self._held:
                self._held = next(self._blocks)
            piece, self._held = self._held[:size], self._held[size:]
            size -= len(piece)
            yield piece


def widened(blocks: Iterable[bytes], width: int, final: int) -> Iterator[bytes]:
    """CSV records of `width` cells padded with empty cells to `final` cells.

    Records end at CRLF outside quotes: inside a record quotes come in pairs (a quoted
    field is opened and closed, and a quote inside it is doubled), so a CRLF that leaves
    an odd number of quotes before it belongs to a quoted field.
    """
    rest = b""
    pending: list[bytes] = []
    quotes = 0
    for block in blocks:
        parts = (rest + block).split(b"\r\n")
        rest = parts.pop()
        out = []
        for part in parts:
            pending.append(part)
            quotes += part.count(b'"')
            if quotes % 2 == 0:
                out.append(_pad(b"\r\n".join(pending), width, final) + b"\r\n")
                pending, quotes = [], 0
        yield b"".join(out)
    if rest or pending:
        raise AssertionError("spooled CSV records must end with CRLF")


def _pad(record: bytes, width: int, final: int) -> bytes:
    """What csv.writer writes for the record's cells followed by empty ones."""
    if width == 0 or (width == 1 and record == b'""'):  # no cell, or one empty cell
        return b'""' if final == 1 else b"," * (final - 1)
    return record + b"," * (final - width)
