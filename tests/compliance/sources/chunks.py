"""Running a source's erasure chunk by chunk, as the worker does, in tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compliance.identities import Identities
from compliance.sources.base import DataSource


def erase_chunks(
    source: DataSource,
    identities: Identities,
    batch_size: int,
    checkpoint: Mapping[str, Any] | None = None,
    *,
    most: int = 1000,
) -> list[int]:
    """Run erase from `checkpoint` (none: the start) until done; the deleted count of each
    chunk. More than `most` chunks fails the test."""
    state: Mapping[str, Any] = checkpoint or {}
    counts = []
    for _ in range(most):
        result = source.erase(identities, state, batch_size)
        counts.append(result.deleted)
        state = result.checkpoint
        if result.done:
            return counts
    raise AssertionError("erase never finished")
