"""A small in-process sliding-window rate limiter, per client key.

Enough for one download-service process: each key keeps the times of its recent hits
(at most `limit` of them), so memory is bounded by `max_keys * limit`. Several processes
each enforce their own window; put a shared limiter in the reverse proxy if that matters.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import deque

IPV6_PREFIX = 64  # one subscriber usually holds a whole /64: count it as one client


def client_key(address: str | None) -> str:
    """The rate-limit key of a client address: an IPv4 address, or an IPv6 /64 network
    (rotating addresses inside one's own /64 must not buy fresh attempts)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class SlidingWindowLimiter:
    """Allow at most `limit` hits per `window` seconds for each key."""

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 10_000) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit, window and max_keys must be positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float) -> bool:
        """Record a hit at `now` (seconds) unless the key is over its limit."""
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                self._make_room(now)
                hits = self._hits[key] = deque(maxlen=self.limit)
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def retry_after(self, key: str, now: float) -> int:
        """Whole seconds until `key` may try again (0 if it may now)."""
        with self._lock:
            hits = self._hits.get(key)
            if not hits or len(hits) < self.limit:
                return 0
            return max(0, int(hits[0] + self.window - now) + 1)

    def __len__(self) -> int:
        return len(self._hits)

    def _make_room(self, now: float) -> None:
        if len(self._hits) < self.max_keys:
            return
        stale = [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]
        for key in stale:
            del self._hits[key]
        while len(self._hits) >= self.max_keys:  # all active: forget the oldest key
            del self._hits[next(iter(self._hits))]
