"""What a worker process builds once (after fork): database, keyring, sources, runners.

The control part (settings, database, keyring) and the sources are built separately:
a broken sources manifest must not stop the worker from recording that a request
cannot run (`run`), nor the maintenance tasks, which need no source.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import RetryableError, TerminalError
from compliance.execution import RunContext
from compliance.keyring import Keyring, load_keyring, refuse_development_keys
from compliance.models import RequestKind
from compliance.retries import defer
from compliance.worker import Outcome, Worker, execute, fail_unrunnable
from tasks.app import settings

if TYPE_CHECKING:
    from compliance.retention.sweep import SweepContext

_lock = threading.Lock()
_built: dict[str, Any] = {}
_options = {"insecure_dev_keys": False}


@dataclass(frozen=True)
class Control:
    """The parts every task needs: settings, the control database, the keyring."""

    settings: Settings
    db: Database
    keyring: Keyring


def accept_development_keys() -> None:
    """Let this process, and the worker processes forked from it, run on the development
    keyring with a PostgreSQL control database (`gdpr worker --insecure-dev-keys`)."""
    _options["insecure_dev_keys"] = True


def control() -> Control:
    with _lock:
        if "control" not in _built:
            current = settings()
            allow = _options["insecure_dev_keys"]
            keyring = load_keyring(current, allow_development=allow)
            refuse_development_keys(current, keyring, allow)
            _built["control"] = Control(current, Database.connect(current), keyring)
        return _built["control"]  # type: ignore[no-any-return]


def worker() -> Worker:
    """The request worker; raises (and is built again next time) if its sources fail to load."""
    base = control()
    with _lock:
        if "worker" not in _built:
            _built["worker"] = build_worker(base)
        return _built["worker"]  # type: ignore[no-any-return]


def run(request_id: uuid.UUID, claim: int | None = None, *, retry_in: float = 0.0) -> Outcome:
    """Run a request (or its next chunk under `claim`). If the sources cannot be loaded
    for a reason retrying cannot fix (a manifest error), the request fails with that
    one line as its `last_error`. A retryable load error (a source unreachable) is
    recorded on the request (reason, attempt, next try in `retry_in` seconds), then
    propagates: the task retries."""
    try:
        current = worker()
    except TerminalError as exc:
        db = control().db
        return fail_unrunnable(db, request_id, str(exc), claim=claim, now=utcnow())
    except RetryableError as exc:
        defer(control().db, request_id, str(exc), retry_in=retry_in, now=utcnow(), claim=claim)
        raise
    return execute(current, request_id, claim, retry_in=retry_in)


def sweep_context() -> SweepContext:
    """What a retention task needs: the request worker's parts, and the Celery dispatcher
    for the erasures of subject policies."""
    from compliance.retention.sweep import SweepContext
    from tasks.app import app
    from tasks.dispatch import CeleryDispatcher

    current = worker()
    return SweepContext(
        settings=current.settings,
        db=current.db,
        keyring=current.keyring,
        sources=current.sources,
        requests=CeleryDispatcher(app),
        actor="retention",
    )


def reset() -> None:
    """Forget the runtime (after fork, or when tests reconfigure the app)."""
    with _lock:
        existing = _built.pop("control", None)
        built = _built.pop("worker", None)
    if built is not None:
        for source in built.sources:
            source.close()
    if existing is not None:
        existing.db.dispose()


def build_worker(base: Control) -> Worker:
    from compliance.sources.registry import load_registry

    registry = load_registry(
        base.settings, environ=os.environ, pseudonym_key=base.keyring.pseudonym_key
    )
    return Worker(
        settings=base.settings,
        db=base.db,
        keyring=base.keyring,
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
    """Package the export, then mail its link (issued in the package's transaction)."""
    from exporters.delivery import ExportDelivery
    from exporters.job import run_export as package

    delivery = ExportDelivery(ctx)
    summary: dict[str, Any] = dict(package(ctx, on_package=delivery.issue))
    if not ctx.dry_run:
        summary["delivery"] = delivery.send()
    return summary


def run_erasure(ctx: RunContext) -> dict[str, Any] | None:
    """One chunk of the erasure; at the end, the subject's exports lose their links and
    packages (receipt key ``exports``), then the receipt is mailed to the subject."""
    from compliance.erasure import run_erasure_chunk
    from exporters.delivery import notify_erasure
    from exporters.revoke import revoke_subject_exports
    from exporters.storage import open_storage

    receipt = run_erasure_chunk(ctx, max_seconds=ctx.settings.erase_chunk_seconds)
    if receipt is None:
        return None
    if ctx.dry_run:
        return receipt
    # An erasure on hold revokes and deletes too: an export package is a copy made for
    # the subject, not the records a legal hold keeps (those stay at their sources). The
    # step finishes only with the erasure, so exports made while it waits go then.
    held = bool(receipt.get("held"))
    exports = revoke_subject_exports(ctx, open_storage(ctx.settings), final=not held)
    receipt = {**receipt, "exports": exports}
    notify_erasure(ctx, receipt)
    return receipt
