"""Prometheus metrics: what the places that do the work record, and what /metrics shows.

The places that do the work call one function each (`step_done`, `step_failed`,
`rows_purged`, `download_refused`); labels are request kinds, source and step names,
policy names and refusal reasons, never anything about a subject. The request gauges
(`RequestGauges`) are read from the control database when /metrics is scraped, in the
process that serves it, with one grouped query.

prometheus_client picks its storage when it is first imported: in memory, or (with
``PROMETHEUS_MULTIPROC_DIR`` set) files that a Celery worker's pool children write and
its main process reads. So nothing here imports it before it is needed, and
`use_multiprocess_dir` must run before anything records a metric (`gdpr worker` calls it
first thing).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, select

from compliance.db import Database, utcnow
from compliance.errors import ComplianceError, ConfigError
from compliance.lifecycle import OPEN
from compliance.models import DsrRequest, RequestKind, RequestStatus

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("gdpr.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
STEP_SECONDS_BUCKETS = (0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 24 * 3600)
_OPEN = sorted(s.value for s in OPEN)


@dataclass(frozen=True)
class _Recorded:
    """The metrics this process records (built on first use)."""

    registry: Any
    step_seconds: Any
    step_failures: Any
    rows_purged: Any
    refusals: Any


_lock = threading.Lock()
_built: dict[str, _Recorded] = {}


def _recorded() -> _Recorded:
    with _lock:
        if "metrics" not in _built:
            _built["metrics"] = _build()
        return _built["metrics"]


def _build() -> _Recorded:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    step = ("kind", "source", "action")
    return _Recorded(
        registry=registry,
        step_seconds=Histogram(
            "gdpr_step_duration_seconds",
            "Time from a request step's first start to its end, by kind, source and action.",
            step,
            buckets=STEP_SECONDS_BUCKETS,
            registry=registry,
        ),
        step_failures=Counter(
            "gdpr_step_failures", "Request steps that failed.", step, registry=registry
        ),
        rows_purged=Counter(
            "gdpr_retention_purged_rows",
            "Rows deleted by retention sweeps, per policy.",
            ("policy",),
            registry=registry,
        ),
        refusals=Counter(
            "gdpr_download_refusals",
            "Download attempts the download service refused, by reason.",
            ("reason",),
            registry=registry,
        ),
    )


# --- what the work records (one call each) --------------------------------------------


def step_done(kind: str, source: str, action: str, seconds: float) -> None:
    _recorded().step_seconds.labels(kind or "unknown", source, action).observe(max(seconds, 0.0))


def step_failed(kind: str, source: str, action: str) -> None:
    _recorded().step_failures.labels(kind or "unknown", source, action).inc()


def rows_purged(policy: str, rows: int) -> None:
    if rows > 0:
        _recorded().rows_purged.labels(policy).inc(rows)


def download_refused(reason: str) -> None:
    _recorded().refusals.labels(reason).inc()


# --- request gauges, from the control database at scrape time --------------------------


class RequestGauges:
    """`gdpr_requests{kind,status}`, `gdpr_requests_overdue{kind}` and
    `gdpr_requests_oldest_open_age_seconds{kind}`, read with one query per scrape.

    Overdue and oldest count open requests (`lifecycle.OPEN`: not completed, rejected or
    cancelled) that are not dry runs: those have a statutory deadline."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return [*self._families(), _database_up(1)]

    def collect(self) -> Iterable[Metric]:
        """The gauges, and `gdpr_control_database_up` (0, and no gauges, when the control
        database cannot be read: the rest of the scrape still answers)."""
        now = self.clock()
        try:
            groups = self._groups(now)
        except ComplianceError as exc:
            log.warning("metrics.requests_unread", extra={"error": type(exc).__name__})
            return [_database_up(0)]
        families = self._families()
        total, overdue, oldest = families
        for group in groups:
            total.add_metric([group.kind, group.status], group.count)
        for kind in RequestKind:
            late, first = _open_of(groups, kind.value)
            overdue.add_metric([kind.value], late)
            oldest.add_metric([kind.value], 0.0 if first is None else (now - first).total_seconds())
        return [*families, _database_up(1)]

    def _families(self) -> tuple[Any, Any, Any]:
        from prometheus_client.core import GaugeMetricFamily

        return (
            GaugeMetricFamily(
                "gdpr_requests", "Requests by kind and status.", labels=["kind", "status"]
            ),
            GaugeMetricFamily(
                "gdpr_requests_overdue",
                "Open requests (not dry runs) past their due date.",
                labels=["kind"],
            ),
            GaugeMetricFamily(
                "gdpr_requests_oldest_open_age_seconds",
                "Age of the oldest open request (not a dry run); 0 when there is none.",
                labels=["kind"],
            ),
        )

    def _groups(self, now: datetime) -> list[_Group]:
        """Every kind and status (0 when none), with the open ones' deadlines."""
        found = {
            (k.value, s.value): _Group(k.value, s.value) for k in RequestKind for s in RequestStatus
        }
        statutory = DsrRequest.dry_run.is_(False)
        query = select(
            DsrRequest.kind,
            DsrRequest.status,
            func.count(),
            func.sum(case((statutory & (DsrRequest.due_at < now), 1), else_=0)),
            func.min(case((statutory, DsrRequest.submitted_at), else_=None)),
        ).group_by(DsrRequest.kind, DsrRequest.status)
        with self.db.session() as session:
            for kind, status, count, late, first in session.execute(query):
                found[(kind, status)] = _Group(kind, status, count, int(late or 0), first)
        return list(found.values())


@dataclass(frozen=True)
class _Group:
    kind: str
    status: str
    count: int = 0
    late: int = 0
    first: datetime | None = None


def _database_up(value: int) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(
        "gdpr_control_database_up",
        "1 when this scrape read the request gauges from the control database, else 0.",
        value=value,
    )


def _open_of(groups: Iterable[_Group], kind: str) -> tuple[int, datetime | None]:
    """How many open requests of `kind` are overdue, and when the oldest was submitted."""
    open_ = [g for g in groups if g.kind == kind and g.status in _OPEN]
    firsts = [g.first for g in open_ if g.first is not None]
    return sum(g.late for g in open_), min(firsts) if firsts else None


# --- serving /metrics -------------------------------------------------------------------


class Exposed:
    """What a /metrics endpoint shows: the metrics recorded in this process (or, in a
    multiprocess worker, by all its processes) and any collectors given."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = [_recorded_here(), *collectors]

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def _recorded_here() -> Any:
    if multiprocess_dir() is None:
        return _recorded().registry
    from prometheus_client import multiprocess

    return multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]


@dataclass
class MetricsServer:
    """A /metrics HTTP server on a daemon thread."""

    server: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forget(self) -> None:
        """In a forked child: close the inherited listening socket (the parent serves)."""
        self.server.socket.close()


def serve(exposed: Exposed, host: str, port: int, *, what: str, env: str) -> MetricsServer:
    """Serve `exposed` on http://host:port/metrics; a one-line `ConfigError` when the
    address cannot be bound (`what` and `env` name the setting to change)."""
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, addr=host, registry=exposed)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {reason}; choose another with {what} or {env}"
        ) from None
    return MetricsServer(server, thread)


def endpoint(host: str, port: int) -> str:
    """The URL a scraper is given for /metrics on `host`:`port`."""
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def use_multiprocess_dir(folder: Path) -> Path:
    """Empty `folder` (create it) and have this process and its children keep their
    metrics there. Call before anything records a metric."""
    try:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare the metrics folder {folder} ({exc.strerror}); set GDPR_HOME to a"
            " writable folder"
        ) from None
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_process_dead(pid: int) -> None:
    """A pool child ended: drop its live gauges' files (its counters stay counted)."""
    if multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
