"""Coalesced exports: queued exports read each table once between them.

A worker that claims an export claims up to `EXPORT_BATCH - 1` more queued exports with
it (`worker._coalesced`), each under its own claim, lease and audit event. Before they
run, `warmed` resolves all their subjects together (`cascade.resolve_many`: one read per
table and round for all of them) and every source that reads for many (`Coalescing`,
the SQL connector's `sources/sql/batch.py`) reads all their rows together: one read per
table, split by subject. Then each request runs exactly as it would alone, one after
the other: its own discover step (with the identities found for it), export steps,
package, link, mail, receipt and outcome. A batch of one takes the same path.

Failure stays with its request: a source whose batched read fails is skipped (each
export then reads it alone, and fails or retries alone if the source is really down);
a request that fails, or is released to retry, leaves the others running. What was
read is used only by this batch's exports and forgotten when the batch ends.

Why claim-time batching, not a batching queue: a request waits for nobody. A worker
takes what is queued when it starts; under a burst, each batch is what arrived while
the one before ran, so batches grow with the load and stay at one when it is quiet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from compliance.cascade import DISCOVER_SOURCE, resolve_many
from compliance.execution import RunContext
from compliance.sources.base import Action, Coalescing, DataSource

log = logging.getLogger("gdpr.coalesce")


@contextmanager
def warmed(sources: Sequence[DataSource], contexts: Sequence[RunContext]) -> Iterator[None]:
    """While the block runs, the batch's subjects are resolved and their rows read."""
    try:
        _warm(sources, contexts)
    except Exception as exc:  # reading ahead only saves work: each export reads alone
        _cool(sources)
        log.warning(
            "dsr.coalesce.skipped", extra={"requests": len(contexts), "error": type(exc).__name__}
        )
    try:
        yield
    finally:
        _cool(sources)


def _warm(sources: Sequence[DataSource], contexts: Sequence[RunContext]) -> None:
    fresh = [ctx for ctx in contexts if _discovers(ctx)]
    if not fresh:
        return
    resolved = resolve_many(sources, [ctx.identities for ctx in fresh])
    for ctx, identities in zip(fresh, resolved, strict=True):
        ctx.prefetched.identities = identities
    subjects = [
        identities
        for ctx, identities in zip(fresh, resolved, strict=True)
        if identities is not None and not ctx.dry_run
    ]
    for source in sources:
        if subjects and isinstance(source, Coalescing):
            source.warm(subjects)
    log.info("dsr.coalesce.read", extra={"requests": len(contexts), "subjects": len(subjects)})


def _discovers(ctx: RunContext) -> bool:
    """Whether the run resolves its subject (an earlier attempt may have stored them)."""
    return not ctx.steps.get(DISCOVER_SOURCE, Action.DISCOVER).done or ctx.dry_run


def _cool(sources: Sequence[DataSource]) -> None:
    for source in sources:
        if isinstance(source, Coalescing):
            source.cool()
