"""Maintenance tasks fired by beat: keep requests moving, delete expired packages."""

from __future__ import annotations

from compliance import maintenance
from tasks import runtime
from tasks.app import app
from tasks.dispatch import CeleryDispatcher


@app.task(name="gdpr.maintenance.sweep", acks_late=True)
def sweep() -> dict[str, int]:
    worker = runtime.worker()
    result = maintenance.sweep(worker.db, worker.settings, CeleryDispatcher(app), worker.clock())
    return {"released": len(result.released), "redispatched": len(result.redispatched)}


@app.task(name="gdpr.maintenance.purge_packages", acks_late=True)
def purge_packages() -> int:
    from exporters.cleanup import purge_expired_packages
    from exporters.storage import open_storage

    worker = runtime.worker()
    storage = open_storage(worker.settings)
    return int(purge_expired_packages(worker.db, storage, worker.clock()))
