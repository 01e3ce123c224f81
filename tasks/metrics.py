"""A worker's /metrics: the pool children record their metrics in files under
``GDPR_HOME/metrics/worker-<port>`` (emptied at start), the main process serves them all,
with the request gauges read from the control database at scrape time.

A child that ends has its live-gauge files dropped (`worker_process_shutdown`); a child
just forked closes its copy of the listening socket and of the gauges' database pool
(`worker_process_init`): only the main process serves, and connections are not shared
across a fork.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from compliance import metrics
from compliance.config import Settings
from compliance.db import Database


def serve_worker_metrics(settings: Settings, db: Database, port: int) -> metrics.MetricsServer:
    """Start serving before Celery starts its pool (call before anything records a metric)."""
    metrics.use_multiprocess_dir((settings.home / "metrics" / f"worker-{port}").resolve())
    server = metrics.serve(
        metrics.Exposed(metrics.RequestGauges(db)),
        settings.metrics_host,
        port,
        what="--metrics-port",
        env="GDPR_METRICS_PORT",
    )

    def forked(**_: Any) -> None:
        server.forget()
        db.engine.dispose(close=False)

    worker_process_init.connect(forked, weak=False)
    worker_process_shutdown.connect(_child_ended, weak=False)
    return server


def _child_ended(pid: int | None = None, **_: Any) -> None:
    if pid is not None:
        metrics.mark_process_dead(pid)
