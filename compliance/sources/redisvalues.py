"""Reading one Redis key faithfully, whatever its type, as an export row.

A row is ``{"key", "type", "value", "ttl"}``: strings as text (bytes when they are not
UTF-8), hashes as dicts, lists in order, sets sorted, sorted sets as ``[member, score]``
pairs by score, streams as ``{"id", "fields"}`` entries; ``ttl`` is whole seconds left,
or None for a key without expiry. Collections are read in pages (HSCAN, SSCAN, ZSCAN,
LRANGE, XRANGE) so a big one never blocks the server in one command.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

PAGE = 1000
Value = str | bytes
if TYPE_CHECKING:
    Client = redis.Redis[bytes]  # responses are bytes: decode_responses stays off
else:
    Client = redis.Redis


def read_key(client: Client, key: bytes) -> dict[str, Any] | None:
    """The key as an export row, or None if it vanished (expired) meanwhile."""
    kind = text(client.type(key))  # type: ignore[no-untyped-call]
    if kind == "none":
        return None
    reader = _READERS.get(str(kind))
    value = reader(client, key) if reader else None
    ttl_ms = int(client.pttl(key))
    ttl = None if ttl_ms < 0 else (ttl_ms + 999) // 1000
    return {"key": text(key), "type": kind, "value": value, "ttl": ttl}


def text(raw: Any) -> Any:
    """UTF-8 text where the bytes are text; the bytes themselves otherwise."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    return raw


def _sort_key(value: Value) -> tuple[bool, str]:
    return (isinstance(value, bytes), str(value))


def _string(client: Client, key: bytes) -> Any:
    return text(client.get(key))


def _hash(client: Client, key: bytes) -> Any:
    return {text(f): text(v) for f, v in client.hscan_iter(key, count=PAGE)}


def _list(client: Client, key: bytes) -> Any:
    out: list[Any] = []
    while True:
        page = client.lrange(key, len(out), len(out) + PAGE - 1)
        out += [text(v) for v in page]
        if len(page) < PAGE:
            return out


def _set(client: Client, key: bytes) -> Any:
    return sorted({text(v) for v in client.sscan_iter(key, count=PAGE)}, key=_sort_key)


def _zset(client: Client, key: bytes) -> Any:
    pairs = {text(m): float(s) for m, s in client.zscan_iter(key, count=PAGE)}
    return [[m, s] for m, s in sorted(pairs.items(), key=lambda p: (p[1], _sort_key(p[0])))]


def _stream(client: Client, key: bytes) -> Any:
    out: list[dict[str, Any]] = []
    start: Any = "-"
    while True:
        page = client.xrange(key, min=start, max="+", count=PAGE)
        for entry_id, fields in page:
            out.append(
                {"id": text(entry_id), "fields": {text(f): text(v) for f, v in fields.items()}}
            )
        if len(page) < PAGE:
            return out
        start = b"(" + page[-1][0]


_READERS: dict[str, Callable[[Client, bytes], Any]] = {
    "string": _string,
    "hash": _hash,
    "list": _list,
    "set": _set,
    "zset": _zset,
    "stream": _stream,
}
