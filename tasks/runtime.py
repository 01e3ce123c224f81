"""What a worker process builds once (after fork): database, keyring, sources, runners."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from compliance.db import Database
from compliance.execution import RunContext
from compliance.keyring import load_keyring
from compliance.models import RequestKind
from compliance.worker import Worker
from tasks.app import settings

_lock = threading.Lock()
_worker: dict[str, Worker] = {}


def worker() -> Worker:
    with _lock:
        if "w" not in _worker:
            _worker["w"] = build_worker()
        return _worker["w"]


def reset() -> None:
    """Forget the runtime (after fork, or when tests reconfigure the app)."""
    with _lock:
        existing = _worker.pop("w", None)
    if existing is not None:
        existing.db.dispose()


def build_worker() -> Worker:
    from compliance.sources.registry import load_registry

    current = settings()
    keyring = load_keyring(current)
    registry = load_registry(current, environ=os.environ, pseudonym_key=keyring.pseudonym_key)
    return Worker(
        settings=current,
        db=Database.connect(current),
        keyring=keyring,
        sources=registry.sources,
        runners={RequestKind.EXPORT: run_export, RequestKind.ERASURE: run_erasure},
        continuation=queue_next_chunk,
    )


def queue_next_chunk(request_id: uuid.UUID, claim: int) -> None:
    """Re-enqueue a request's next chunk under its claim (STYLE: big work in chunks)."""
    from tasks.app import app
    from tasks.dispatch import RUN_REQUEST

    app.send_task(RUN_REQUEST, args=[str(request_id), claim], queue="requests")


def run_export(ctx: RunContext) -> dict[str, Any]:
    from exporters.delivery import deliver_export
    from exporters.job import run_export as package

    summary: dict[str, Any] = dict(package(ctx))
    if not ctx.dry_run:
        summary["delivery"] = deliver_export(ctx)
    return summary


def run_erasure(ctx: RunContext) -> dict[str, Any] | None:
    """One chunk of the erasure; at the end, the receipt is mailed to the subject."""
    from compliance.erasure import run_erasure_chunk
    from exporters.delivery import notify_erasure

    receipt = run_erasure_chunk(ctx, max_seconds=ctx.settings.erase_chunk_seconds)
    if receipt is None:
        return None
    if not ctx.dry_run:
        notify_erasure(ctx, receipt)
    return receipt
