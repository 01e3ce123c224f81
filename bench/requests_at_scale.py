"""Requests at scale: single exports and erasures, 50 exports at once, against the floor.

    .venv/bin/python bench/requests_at_scale.py [--sizes 3,10000,100000] [--repeat 5]
        [--burst 50] [--quick] [--json]

For each size, a PostgreSQL shop database of that many customers (`bench/scale_schema.py`:
addresses, 2 cards, 3 orders of 2 items, 5 logins, 2 visits and a support request per
customer; at 100,000 customers 600,000 order items and 500,000 logins) is generated in
the server, first with no index beyond the primary keys, then with the indexes an index
advisor names (`gdpr sources advise` when the CLI has it, else the list in
`scale_schema.INDEXES`). For each of the two, a real Celery worker with two pool
processes (`gdpr worker -c 2 -Q requests`, through `bench/scale_worker.py`, which counts
statements) runs on Redis, the control database in its own PostgreSQL database, and the
bench measures, client-observed through the service layer the CLI calls
(`compliance.requests.submit`/`approve`, then polling the request's status):

- `--repeat` single exports and single erasures, one at a time: p50 and p95 from submit
  to completed (an erasure is submitted by one operator and approved by another);
- the floor beside each: one hand-written query per table for the same subject (export),
  or one hand-written DELETE per table in one transaction (erasure), on a connection
  already open; ratio = our p50 / floor p50;
- `--burst` exports submitted at once (distinct customers where there are enough):
  requests/s from the first submit to the last completion; then, as its anchor, as many
  other customers' exports at once on a second worker whose EXPORT_BATCH is 1 (each
  export claimed and read alone), and the ratio of the two rates;
- per request, from the worker's own counters: statements on the shop and on the control
  database, and the worker's time split into shop SQL, control SQL and the rest
  (packaging, encryption, storage, mail, Python);
- the anchor of the per-request overhead: a Celery task that does nothing (`bench.noop`),
  through the same broker and worker: p50 round trip and tasks/s, as ratios;
- the peak RSS of the worker's main process and of its largest pool process.

Every erasure (ours and the floor's) gets a customer generated for it just before, beyond
the size's last id, so the table sizes stay put. Emails go to an outbox folder and packages
to a folder (GDPR_BENCH_MAIL_URL / GDPR_BENCH_STORAGE_URL to change). Server:
GDPR_BENCH_PG_URL, or GDPR_BENCH_PG_HOST / _PORT / _USER (default postgres@127.0.0.1:5432);
two scratch databases `<GDPR_BENCH_DB>_shop` and `_control` (default
``gdpr_bench_scale_<random>``) are created and dropped. Broker: GDPR_BENCH_BROKER_URL
(default redis://127.0.0.1:6379/12), which must name an empty database; it is emptied at
the end. Exit code 1 when a goal is missed at the largest size.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import redis
from sqlalchemy import URL, make_url, select

from bench import scale_schema as shop
from bench.request_overhead import NOOP_TASK, Overhead, measure_overhead, worker_rss_mib
from bench.scale_worker import READY, Snapshot, settled
from compliance import requests as service
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.identities import Identities, parse_identity
from compliance.keyring import Keyring, load_keyring, new_key_line
from compliance.models import DsrRequest, RequestKind, RequestStatus
from compliance.sources.base import DataSource
from compliance.sources.registry import load_registry
from tasks.dispatch import RUN_REQUEST, CeleryDispatcher

BENCH = Path(__file__).resolve().parent
GDPR = str(Path(sys.executable).with_name("gdpr"))
BROKER_URL = os.environ.get("GDPR_BENCH_BROKER_URL", "redis://127.0.0.1:6379/12")
GOAL_EXPORT = 1.5  # our single export / the floor
GOAL_ERASURE = 2.0
GOAL_COALESCED = 10.0  # exports at once with the worker's batch / the same with batches of one
# Ethyca Fides 2.78.2 at 100,003 customers, unindexed (measured in an earlier run, another day)
PEER = {"export_s": 0.77, "erasure_s": 1.27, "burst_per_s": 1.31}
POLL_SECONDS = 0.005
FULL = {"sizes": "3,10000,100000", "repeat": 5, "burst": 50, "noops": 500}
QUICK = {"sizes": "3,1000", "repeat": 2, "burst": 10, "noops": 100}
SUBMITTER, APPROVER = "bench-submitter", "bench-approver"


def server_url() -> URL:
    if os.environ.get("GDPR_BENCH_PG_URL"):
        return make_url(os.environ["GDPR_BENCH_PG_URL"]).set(drivername="postgresql+psycopg")
    return URL.create(
        "postgresql+psycopg",
        username=os.environ.get("GDPR_BENCH_PG_USER", "postgres"),
        host=os.environ.get("GDPR_BENCH_PG_HOST", "127.0.0.1"),
        port=int(os.environ.get("GDPR_BENCH_PG_PORT", "5432")),
        database="postgres",
    )


def conninfo(url: URL) -> dict[str, Any]:
    """psycopg.connect() arguments for a SQLAlchemy URL."""
    found = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    if url.password:
        found["password"] = url.password
    return {k: v for k, v in found.items() if v is not None}


def rendered(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@contextmanager
def scratch_databases(server: URL) -> Iterator[tuple[URL, URL]]:
    """(shop, control) databases created for this run, dropped at the end."""
    base = os.environ.get("GDPR_BENCH_DB") or f"gdpr_bench_scale_{secrets.token_hex(4)}"
    names = [f"{base}_shop", f"{base}_control"]
    with psycopg.connect(**conninfo(server), autocommit=True) as conn:
        created = []
        try:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
            yield server.set(database=names[0]), server.set(database=names[1])
        finally:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'DROP ROLE IF EXISTS "{name[:53]}_operators"')  # migration 0002's


@contextmanager
def empty_broker() -> Iterator[redis.Redis[bytes]]:
    """The bench's Redis database: refused unless empty, emptied at the end."""
    broker = redis.Redis.from_url(BROKER_URL)
    if broker.dbsize():
        broker.close()
        raise SystemExit(f"{BROKER_URL} is not empty; set GDPR_BENCH_BROKER_URL to a free db")
    try:
        yield broker
    finally:
        broker.flushdb()
        broker.close()


# --- our side: settings, control database, sources, dispatcher ---------------------------


@dataclass
class Bench:
    """What the client side needs, built once: the service layer's arguments, the shop
    connection the floor and the generator use, the worker's folder."""

    settings: Settings
    db: Database
    keyring: Keyring
    sources: list[DataSource]
    dispatcher: CeleryDispatcher
    shop: psycopg.Connection[Any]
    folder: Path
    shop_name: str
    next_fresh: int = 0  # the next customer id generated for an erasure

    def fresh_customer(self) -> str:
        """A customer generated just now (erasures destroy theirs): their email."""
        customer = self.next_fresh
        self.next_fresh += 1
        shop.fill(self.shop, customer, customer)
        return shop.email_of(customer)


@contextmanager
def bench_side(shop_url: URL, control: URL) -> Iterator[Bench]:
    from tasks.app import configure

    folder = Path(tempfile.mkdtemp(prefix="gdpr-bench-scale-"))
    manifest = folder / "sources.toml"
    manifest.write_text(shop.manifest(rendered(shop_url)), encoding="utf-8")
    settings = Settings(
        home=folder / ".gdpr",
        database_url=rendered(control),
        broker_url=BROKER_URL,
        storage_url=os.environ.get("GDPR_BENCH_STORAGE_URL", ""),
        mail_url=os.environ.get("GDPR_BENCH_MAIL_URL", ""),
        sources=str(manifest),
        operator=SUBMITTER,
        keys=new_key_line("bench-1"),
        pseudonym_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    db = Database.connect(settings)
    conn = psycopg.connect(**conninfo(shop_url), autocommit=True)
    try:
        db.upgrade()
        keyring = load_keyring(settings)
        registry = load_registry(
            settings, environ={}, pseudonym_key=keyring.pseudonym_key, connect=False
        )
        try:
            dispatcher = CeleryDispatcher(configure(settings))
            sources = list(registry.sources)
            name = shop_url.database or ""
            yield Bench(settings, db, keyring, sources, dispatcher, conn, folder, name)
        finally:
            registry.close()
    finally:
        conn.close()
        db.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def worker_environment(bench: Bench, batch: int | None = None) -> dict[str, str]:
    settings = bench.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
    env.update(
        {
            "GDPR_HOME": str(settings.home),
            "GDPR_DATABASE_URL": settings.database_url,
            "GDPR_BROKER_URL": BROKER_URL,
            "GDPR_SOURCES": settings.sources,
            "GDPR_OPERATOR": "bench-worker",
            "GDPR_KEYS": settings.keys,
            "GDPR_PSEUDONYM_KEY": settings.pseudonym_key,
        }
    )
    for name, value in (("STORAGE_URL", settings.storage_url), ("MAIL_URL", settings.mail_url)):
        if value:
            env[f"GDPR_{name}"] = value
    if batch is not None:
        env["GDPR_EXPORT_BATCH"] = str(batch)
    return env


@dataclass
class Worker:
    """A running `gdpr worker -c 2 -Q requests` with counters (bench/scale_worker.py)."""

    pid: int
    stats: Path
    log: Path


@contextmanager
def celery_worker(bench: Bench, label: str, batch: int | None = None) -> Iterator[Worker]:
    """`batch`: the worker's EXPORT_BATCH (its default when None; 1 runs exports one by one)."""
    stats = bench.folder / f"stats-{label}"
    stats.mkdir()
    log = bench.folder / f"worker-{label}.log"
    argv = [sys.executable, str(BENCH / "scale_worker.py"), str(stats), "-c", "2", "-Q", "requests"]
    with log.open("ab") as handle:
        process = subprocess.Popen(
            argv,
            env=worker_environment(bench, batch),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while not (stats / READY).exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"the Celery worker did not start:\n{tail}")
                time.sleep(0.1)
            yield Worker(process.pid, stats, log)
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


# --- one request, client-observed ----------------------------------------------------------


def submit(bench: Bench, kind: RequestKind, email: str) -> uuid.UUID:
    """Submit through the service layer; an erasure is approved by a second operator."""
    submission = service.Submission(
        kind=kind,
        identities=Identities.of([parse_identity("email", email)]),
        ticket="BENCH-SCALE",
    )
    created = service.submit(
        bench.db,
        bench.settings,
        bench.keyring,
        submission,
        sources=bench.sources,
        operator=SUBMITTER,
        now=utcnow(),
        dispatcher=bench.dispatcher,
    )
    if created.status == RequestStatus.AWAITING_APPROVAL:
        service.approve(
            bench.db,
            bench.settings,
            created.id,
            operator=APPROVER,
            now=utcnow(),
            dispatcher=bench.dispatcher,
        )
    return created.id


def statuses(bench: Bench, ids: list[uuid.UUID]) -> list[tuple[str, str | None]]:
    with bench.db.session() as session:
        rows = session.execute(
            select(DsrRequest.status, DsrRequest.last_error).where(DsrRequest.id.in_(ids))
        ).all()
    return [(str(status), error) for status, error in rows]


def wait_completed(bench: Bench, ids: list[uuid.UUID], log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = statuses(bench, ids)
        failed = [error for status, error in found if status == RequestStatus.FAILED]
        if failed:
            raise SystemExit(f"a request failed: {failed[0]}; see {log}")
        if sum(status == RequestStatus.COMPLETED for status, _ in found) == len(ids):
            return
        time.sleep(POLL_SECONDS if len(ids) == 1 else 0.02)
    raise SystemExit(f"requests did not complete within {limit:.0f} s; see {log}")


def one_request(bench: Bench, worker: Worker, kind: RequestKind, email: str) -> float:
    began = time.perf_counter()
    request_id = submit(bench, kind, email)
    wait_completed(bench, [request_id], worker.log, limit=1800)
    return time.perf_counter() - began


def timed(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


# --- phases --------------------------------------------------------------------------------


@dataclass
class Phase:
    """One kind of measurement: our latencies, the floor's, the worker's counters."""

    ours: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    requests: int = 0
    counters: Snapshot | None = None
    seconds: float = 0.0


def spread(size: int, count: int, offset: int = 0) -> list[int]:
    """`count` customer ids spread over 1..size (repeating when size < count)."""
    step = max(1, size // max(count, 1))
    return [1 + (offset + i * step) % size for i in range(count)]


def singles(bench: Bench, worker: Worker, kind: RequestKind, subjects: list[int]) -> Phase:
    """Ours and the floor back to back per repeat, alternating which goes first."""
    phase = Phase(requests=len(subjects))
    before = settled(worker.stats)
    for turn, customer in enumerate(subjects):
        ours, floor = pair(bench, worker, kind, customer)
        if turn % 2:
            phase.floor.append(floor())
            phase.ours.append(ours())
        else:
            phase.ours.append(ours())
            phase.floor.append(floor())
    phase.counters = settled(worker.stats).minus(before)
    return phase


def pair(
    bench: Bench, worker: Worker, kind: RequestKind, customer: int
) -> tuple[Callable[[], float], Callable[[], float]]:
    """(our request, the floor), each returning its seconds: an export and its floor read
    `customer`; an erasure and its floor each erase a customer generated for them."""
    if kind == RequestKind.EXPORT:
        mine = theirs = shop.email_of(customer)
        floor: Callable[[psycopg.Connection[Any], str], object] = shop.export_floor
    else:
        mine, theirs = bench.fresh_customer(), bench.fresh_customer()
        floor = shop.erase_floor
    return (
        partial(one_request, bench, worker, kind, mine),
        partial(timed, partial(floor, bench.shop, theirs)),
    )


def burst(bench: Bench, worker: Worker, subjects: list[int]) -> Phase:
    """All exports submitted at once: from the first submit to the last completion."""
    before = settled(worker.stats)
    began = time.perf_counter()
    ids = [submit(bench, RequestKind.EXPORT, shop.email_of(c)) for c in subjects]
    wait_completed(bench, ids, worker.log, limit=3600)
    phase = Phase(requests=len(ids), seconds=time.perf_counter() - began)
    phase.counters = settled(worker.stats).minus(before)
    return phase


def noops(bench: Bench, trips: int, many: int) -> dict[str, float]:
    """The bare Celery anchor (`bench/request_overhead.py`'s task, one Redis INCR):
    `trips` round trips one at a time (p50), then `many` sent at once (tasks/s)."""
    client = redis.Redis.from_url(BROKER_URL)
    counter = f"bench:scale:noop:{uuid.uuid4().hex}"
    try:
        seconds = [noop_burst(bench, client, counter, 1) for _ in range(trips)]
        rate = many / noop_burst(bench, client, counter, many)
    finally:
        client.delete(counter)
        client.close()
    return {"noop_p50_ms": statistics.median(seconds) * 1000, "noop_per_s": rate}


def noop_burst(bench: Bench, client: redis.Redis[bytes], counter: str, count: int) -> float:
    """Seconds from sending `count` no-ops to the last one having run."""
    target = int(client.get(counter) or 0) + count
    deadline = time.monotonic() + 120
    began = time.perf_counter()
    for _ in range(count):
        bench.dispatcher.app.send_task(NOOP_TASK, args=[counter], queue="requests")
    while int(client.get(counter) or 0) < target:
        if time.monotonic() > deadline:
            raise SystemExit("no-op tasks did not run within 120 s; see the worker log")
        time.sleep(0.0005)
    return time.perf_counter() - began


def warm_up(bench: Bench, worker: Worker) -> None:
    """Each pool process builds its runtime (sources, reflection) on its first task:
    two exports at once, untimed."""
    ids = [submit(bench, RequestKind.EXPORT, shop.email_of(1)) for _ in range(2)]
    wait_completed(bench, ids, worker.log, limit=1800)
    settled(worker.stats)


def small_overhead(bench: Bench, worker: Worker, size: int, args: Any) -> Overhead:
    """`bench/request_overhead.py`'s measurement on this worker: small exports (this
    size's customers, in turn) at once and one at a time, against its no-op."""

    def submit_one(number: int) -> uuid.UUID:
        return submit(bench, RequestKind.EXPORT, shop.email_of(1 + number % size))

    return measure_overhead(
        bench.db, submit_one, count=args.burst, singles=max(5, args.repeat), worker_pid=worker.pid
    )


# --- one size, one index state ---------------------------------------------------------------


def measure(
    bench: Bench, size: int, label: str, args: Any, with_small: bool = False
) -> dict[str, Any]:
    started = time.perf_counter()
    with celery_worker(bench, label) as worker:
        warm_up(bench, worker)
        exports = singles(bench, worker, RequestKind.EXPORT, spread(size, args.repeat))
        erasures = singles(bench, worker, RequestKind.ERASURE, list(range(args.repeat)))
        many = burst(bench, worker, spread(size, args.burst, offset=size // 2))
        anchor = noops(bench, trips=max(20, args.repeat), many=args.noops)
        small = small_overhead(bench, worker, size, args) if with_small else None
        memory = worker_rss_mib(worker.pid)
    with celery_worker(bench, f"{label}-one-by-one", batch=1) as worker:
        warm_up(bench, worker)
        alone = burst(bench, worker, spread(size, args.burst, offset=size // 4))
    return {
        "export": summarise(exports, bench.shop_name),
        "erasure": summarise(erasures, bench.shop_name),
        "burst": {
            "requests": many.requests,
            "seconds": round(many.seconds, 2),
            "per_s": round(many.requests / many.seconds, 2),
            **per_request(many, bench.shop_name),
        },
        "burst_one_by_one": {
            "requests": alone.requests,
            "seconds": round(alone.seconds, 2),
            "per_s": round(alone.requests / alone.seconds, 2),
            **per_request(alone, bench.shop_name),
        },
        "coalesced_ratio": round(alone.seconds / many.seconds, 2),
        **{k: round(v, 2) for k, v in anchor.items()},
        "worker_rss_mib": {k: round(v, 1) for k, v in memory.items()},
        "small_overhead": small.to_dict() if small else None,
        "small_overhead_lines": small.lines()[:-1] if small else [],  # its RSS line: ours
        "phase_seconds": round(time.perf_counter() - started, 1),
    }


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]


def summarise(phase: Phase, shop_name: str) -> dict[str, Any]:
    ours, floor = statistics.median(phase.ours), statistics.median(phase.floor)
    return {
        "p50_s": round(ours, 4),
        "p95_s": round(p95(phase.ours), 4),
        "floor_p50_s": round(floor, 4),
        "ratio": round(ours / floor, 2),
        **per_request(phase, shop_name),
        "slowest_shop_sql": slowest(phase, shop_name),
    }


def slowest(phase: Phase, shop_name: str, count: int = 3) -> list[dict[str, Any]]:
    """The shop statement shapes that took longest, per request."""
    n = max(phase.requests, 1)
    counters = phase.counters or Snapshot({}, {}, {})
    return [
        {"sql": sql, "statements": round(found[0] / n, 1), "ms": round(found[1] / n * 1000, 1)}
        for sql, found in counters.slowest(f"{shop_name}: ", count)
    ]


def per_request(phase: Phase, shop_name: str) -> dict[str, float]:
    """Statements and worker seconds per request, from the worker's counters."""
    counters = phase.counters or Snapshot({}, {}, {})
    n = max(phase.requests, 1)
    app_n, app_s = counters.sql.get(shop_name, [0, 0.0])
    control_n = sum(v[0] for k, v in counters.sql.items() if k != shop_name)
    control_s = sum(v[1] for k, v in counters.sql.items() if k != shop_name)
    task_s = counters.tasks.get(RUN_REQUEST, [0, 0.0])[1]
    return {
        "shop_statements": round(app_n / n, 1),
        "control_statements": round(control_n / n, 1),
        "worker_ms": round(task_s / n * 1000, 1),
        "shop_sql_ms": round(app_s / n * 1000, 1),
        "control_sql_ms": round(control_s / n * 1000, 1),
        "other_ms": round((task_s - app_s - control_s) / n * 1000, 1),
    }


# --- indexes ---------------------------------------------------------------------------------


def advised_indexes(bench: Bench) -> tuple[list[str], str]:
    """The CREATE INDEX statements `gdpr sources advise` prints, when the CLI has it;
    else the schema's own list. (statements, where they came from)"""
    env = worker_environment(bench)
    found = subprocess.run(
        [GDPR, "sources", "advise"], env=env, capture_output=True, text=True, check=False
    )
    lines = [ln.strip().rstrip(";") for ln in found.stdout.splitlines()]
    advised = [ln for ln in lines if ln.upper().startswith("CREATE INDEX")]
    if found.returncode == 0 and advised:
        return advised, "gdpr sources advise"
    return list(shop.INDEXES), "scale_schema.INDEXES (gdpr sources advise not available)"


def one_size(bench: Bench, size: int, args: Any) -> dict[str, Any]:
    began = time.perf_counter()
    shop.create(bench.shop, size)
    bench.next_fresh = size + 1
    result: dict[str, Any] = {
        "customers": size,
        "generate_s": round(time.perf_counter() - began, 1),
        "rows": sum(shop.row_counts(bench.shop).values()),
        "table_sizes": shop.table_sizes(bench.shop),
    }
    print(f"size {size}: generated {result['rows']} rows in {result['generate_s']} s", flush=True)
    smallest = size == min(args.size_list)
    result["unindexed"] = measure(bench, size, f"{size}-unindexed", args, smallest)
    print(f"size {size}: unindexed done in {result['unindexed']['phase_seconds']} s", flush=True)
    began = time.perf_counter()
    statements, source = advised_indexes(bench)
    result["indexes"] = shop.create_indexes(bench.shop, statements)
    result["index_source"] = source
    result["index_s"] = round(time.perf_counter() - began, 1)
    result["indexed"] = measure(bench, size, f"{size}-indexed", args)
    print(f"size {size}: indexed done in {result['indexed']['phase_seconds']} s", flush=True)
    return result


# --- report ----------------------------------------------------------------------------------


def goals(results: list[dict[str, Any]]) -> dict[str, bool]:
    largest = max(results, key=lambda r: r["customers"])
    found = {}
    size = largest["customers"]
    for state in ("unindexed", "indexed"):
        run = largest[state]
        found[f"export <= {GOAL_EXPORT}x floor at {size} ({state})"] = (
            run["export"]["ratio"] <= GOAL_EXPORT
        )
        found[f"erasure <= {GOAL_ERASURE}x floor at {size} ({state})"] = (
            run["erasure"]["ratio"] <= GOAL_ERASURE
        )
    unindexed = largest["unindexed"]
    found[f"exports at once >= {GOAL_COALESCED:g}x one by one at {size} (unindexed)"] = (
        unindexed["coalesced_ratio"] >= GOAL_COALESCED
    )
    return found


def print_size(result: dict[str, Any], repeat: int) -> None:
    print(
        f"\n== {result['customers']} customers: {result['rows']} rows, generated in"
        f" {result['generate_s']} s; {result['indexes']} indexes in {result['index_s']} s"
        f" from {result['index_source']}"
    )
    print(
        f"{'':22} {'p50':>8} {'p95':>8} {'floor':>8} {'ratio':>6}   {'statements':>14}"
        f"   worker ms = shop SQL + control SQL + other"
    )
    for state in ("unindexed", "indexed"):
        run = result[state]
        for kind in ("export", "erasure"):
            row = run[kind]
            print(
                f"{kind + ' ' + state:22} {row['p50_s']:>7.3f}s {row['p95_s']:>7.3f}s"
                f" {row['floor_p50_s']:>7.3f}s {row['ratio']:>5.1f}x"
                f"   {row['shop_statements']:>5g} + {row['control_statements']:<6g}"
                f"   {split(row)}"
            )
        many = run["burst"]
        print(
            f"{str(many['requests']) + ' exports at once':22} {many['per_s']:>7.2f}/s"
            f" in {many['seconds']} s"
            f"{'':14} {many['shop_statements']:>5g} + {many['control_statements']:<6g}"
            f"   {split(many)}"
        )
        alone = run["burst_one_by_one"]
        print(
            f"{'  the same, one by one':22} {alone['per_s']:>7.2f}/s"
            f" in {alone['seconds']} s"
            f"{'':14} {alone['shop_statements']:>5g} + {alone['control_statements']:<6g}"
            f"   {split(alone)}   coalesced / one by one {run['coalesced_ratio']:.1f}x"
        )
        export_ms = run["export"]["p50_s"] * 1000
        print(
            f"  {state}: no-op task p50 {run['noop_p50_ms']:.1f} ms, {run['noop_per_s']:.0f}/s;"
            f" export p50 / no-op p50 {export_ms / run['noop_p50_ms']:.1f}x,"
            f" no-op/s / exports-at-once/s {run['noop_per_s'] / many['per_s']:.1f}x;"
            f" worker peak RSS {rss(run['worker_rss_mib'])}; phase {run['phase_seconds']} s"
        )
        if run["small_overhead_lines"]:
            print(f"  {state}: bench/request_overhead.py's measurement on this worker:")
            for line in run["small_overhead_lines"]:
                print(f"  {line}")
    print(f"(p50/p95 of {repeat}; statements per request: shop + control database)")


def rss(peaks: dict[str, float]) -> str:
    return ", ".join(f"{name} {mib:.0f} MiB" for name, mib in peaks.items())


def split(row: dict[str, Any]) -> str:
    return (
        f"{row['worker_ms']:g} = {row['shop_sql_ms']:g} + {row['control_sql_ms']:g}"
        f" + {row['other_ms']:g}"
    )


def print_peer(results: list[dict[str, Any]]) -> None:
    at = [r for r in results if r["customers"] >= 100_000]
    if not at:
        return
    run = at[0]["unindexed"]
    print(
        f"\nagainst Fides 2.78.2 at 100,003 customers unindexed (an earlier run),"
        f" speed ours / peer: export {PEER['export_s'] / run['export']['p50_s']:.2f}x,"
        f" erasure {PEER['erasure_s'] / run['erasure']['p50_s']:.2f}x (goal >= 3x),"
        f" exports at once {run['burst']['per_s'] / PEER['burst_per_s']:.2f}x (goal >= 10x)"
    )


def print_slowest(result: dict[str, Any]) -> None:
    print(f"\nslowest shop statements per request at {result['customers']} customers:")
    for state in ("unindexed", "indexed"):
        for kind in ("export", "erasure"):
            for row in result[state][kind]["slowest_shop_sql"]:
                print(
                    f"  {kind} {state}: {row['ms']:>7.1f} ms in {row['statements']:g}"
                    f" x {row['sql'][:100]}"
                )


def print_report(report: dict[str, Any]) -> None:
    for result in report["sizes"]:
        print_size(result, report["repeat"])
    print_peer(report["sizes"])
    print_slowest(max(report["sizes"], key=lambda r: r["customers"]))
    missed = [goal for goal, ok in report["goals"].items() if not ok]
    print("goals: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    print(
        f"total {report['total_s']} s; note: shared, noisy machine (load average"
        f" {report['load_average']:.2f}): compare ratios within one run, never across runs"
    )


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="customers, comma-separated (default 3,10000,100000)")
    parser.add_argument("--repeat", type=int, help="single exports and erasures (default 5)")
    parser.add_argument("--burst", type=int, help="exports submitted at once (default 50)")
    parser.add_argument("--noops", type=int, help="no-op tasks sent at once (default 500)")
    parser.add_argument(
        "--quick", action="store_true", help="defaults of a smoke run: sizes 3,1000; 2; 10; 100"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen = QUICK if args.quick else FULL
    for name, value in chosen.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes whole numbers separated by commas, e.g. 3,10000")
    if not args.size_list or min(*args.size_list, args.repeat, args.burst, args.noops) < 1:
        parser.error("--sizes, --repeat, --burst and --noops need values of at least 1")
    return args


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    with (
        empty_broker(),
        scratch_databases(server_url()) as (shop_url, control),
        bench_side(shop_url, control) as bench,
    ):
        results = [one_size(bench, size, args) for size in args.size_list]
    report = {
        "repeat": args.repeat,
        "sizes": results,
        "goals": goals(results),
        "total_s": round(time.perf_counter() - began, 1),
        "load_average": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0 if all(report["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
