"""Retention sweep of a big table against one DELETE and an in-database key-range loop.

    .venv/bin/python bench/retention.py [--rows 2000000] [--batch 20000] [--repeat 3]
        [--writer-rate 100] [--subjects 0] [--json]

One PostgreSQL table ``events(id bigint primary key, user_id int, created_at timestamptz,
payload text)`` of `--rows` rows, every odd id 60 days old (expired under a 30-day
policy), every even id a day old; no index besides the primary key. Each repeat fills
three identical copies (one ``INSERT ... SELECT generate_series``, then ``VACUUM
ANALYZE``), one per variant, in rotating order:

- ours: ``run_inline`` of the manifest's rows policy (``retention = { column =
  "created_at", days = 30 }``), `--batch` keys per batch transaction, the control
  database on the same server; the default settings otherwise (a table of a million rows
  or more is swept in 4 key-range parts, one after the other here);
- anchor 1: one ``DELETE FROM events WHERE created_at < cutoff`` in one transaction;
- anchor 2: a PL/pgSQL procedure deleting id ranges of `--batch` and committing each.

During every variant two writer processes (each on its own connection; processes, so
the GIL slows neither side) run small transactions on the same table, `--writer-rate`
per second each: one updates a fresh row and inserts a row in turn, the other updates
an expired row (one a sweep may be deleting: it waits for the row lock the deleting
transaction holds). Reported: medians over `--repeat` of rows/s, ours/anchor ratios
(median of the per-repeat pairs), our batch transaction durations (max, p99) from the
run's counts and the share of our time spent inside them, the writers' latencies (p99,
max), the peak Python heap of one more (untimed) run of ours and the peak RSS of this
process. Goals: throughput >= 1.0x the single DELETE, every batch <= 100 ms, the writer
never waits > 100 ms during our sweep.

`--subjects N` (off by default) adds a subject-level sweep: a ``users`` table of N
accounts closed two years ago under ``scope = "subject"``; ``run_inline`` hands each to a
pre-approved erasure request, dispatched to a real Celery worker (``gdpr worker -c 2``,
two processes) on Redis; reported is subjects/s from the start of the sweep until every
erasure has completed.

Server: GDPR_BENCH_PG_URL, or GDPR_BENCH_PG_HOST / _PORT / _USER (default
postgres@127.0.0.1:5432). Two scratch databases are created (GDPR_BENCH_DB, default
``gdpr_bench_retention_<random>``, with the suffixes ``_app`` and ``_control``) and
dropped at the end. Broker for `--subjects`: GDPR_BENCH_BROKER_URL (default
redis://127.0.0.1:6379/14); the database must be empty, and is emptied again at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing
import os
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from sqlalchemy import URL, func, make_url, select

from compliance import defaults
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import Dispatcher, RecordingDispatcher
from compliance.keyring import Keyring, load_keyring, new_key_line
from compliance.models import DsrRequest
from compliance.retention.sweep import SweepContext, run_inline
from compliance.sources.registry import Registry, load_registry

GOAL_RATIO = 1.0
GOAL_BATCH_MS = 100.0
GOAL_WRITER_MS = 100.0
DAYS = 30
POLICY = "app.events"
SUBJECT_POLICY = "app.users"
GDPR = str(Path(sys.executable).with_name("gdpr"))
BROKER_URL = os.environ.get("GDPR_BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")


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


MANIFEST = """\
[sources.app]
kind = "sql"
url = "{url}"

[sources.app.tables.events]
retention = {{ column = "created_at", days = {days} }}
"""
USERS = "CREATE TABLE users (id bigint PRIMARY KEY, email text, closed_at timestamptz)"
SUBJECT_TABLE = """
[sources.app.tables.users]
identities = { id = "user_id", email = "email" }
retention = { column = "closed_at", days = 365, scope = "subject" }
"""

EVENTS = [
    "DROP TABLE IF EXISTS events",
    "CREATE TABLE events (id bigint PRIMARY KEY, user_id int,"
    " created_at timestamptz NOT NULL, payload text)",
    # odd ids 60 days old (expired), even ids a day old; seconds apart, like a live table
    "INSERT INTO events SELECT g, g % 100000,"
    " now() - CASE WHEN g % 2 = 1 THEN interval '60 days' ELSE interval '1 day' END"
    " - (g % 86400) * interval '1 second', md5(g::text)"
    " FROM generate_series(1, %(rows)s) g",
    "VACUUM ANALYZE events",
]

# Anchor 2: what a DBA would write in the database itself, one commit per id range.
LOOP = """
CREATE PROCEDURE sweep_by_range(cutoff timestamptz, step bigint,
    INOUT deleted bigint DEFAULT 0, INOUT batches int DEFAULT 0,
    INOUT max_ms float8 DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    lo bigint;
    hi bigint;
    n bigint;
    began timestamptz;
BEGIN
    SELECT min(id), max(id) INTO lo, hi FROM events;
    WHILE lo <= hi LOOP
        began := clock_timestamp();
        DELETE FROM events WHERE id >= lo AND id < lo + step AND created_at < cutoff;
        GET DIAGNOSTICS n = ROW_COUNT;
        COMMIT;
        deleted := deleted + n;
        batches := batches + 1;
        max_ms := greatest(max_ms, extract(epoch FROM clock_timestamp() - began) * 1000);
        lo := lo + step;
    END LOOP;
END $$
"""


@dataclass
class Variant:
    """One side's measurements over the repeats."""

    name: str
    deleted: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    batch_ms: list[float] = field(default_factory=list)
    writer: list[dict[str, list[float]]] = field(default_factory=list)

    def rate(self) -> float:
        return statistics.median(d / s for d, s in zip(self.deleted, self.seconds, strict=True))


# --- scratch databases --------------------------------------------------------------


@contextmanager
def scratch_databases(server: URL) -> Iterator[tuple[URL, URL]]:
    """(app, control) databases created for this run, dropped at the end."""
    base = os.environ.get("GDPR_BENCH_DB") or f"gdpr_bench_retention_{secrets.token_hex(4)}"
    names = [f"{base}_app", f"{base}_control"]
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


def fill(app: URL, rows: int) -> None:
    """A fresh `events` table; the procedure of anchor 2 beside it."""
    with psycopg.connect(**conninfo(app), autocommit=True) as conn:
        for statement in EVENTS:
            conn.execute(statement.replace("%(rows)s", str(rows)))
        if conn.execute("SELECT 1 FROM pg_proc WHERE proname = 'sweep_by_range'").fetchone():
            return
        conn.execute(LOOP)


# --- the three variants --------------------------------------------------------------


@dataclass
class Sweep:
    """Our side: settings, control database and registry, built once."""

    settings: Settings
    db: Database
    keyring: Keyring
    registry: Registry
    dispatcher: Dispatcher

    def ctx(self) -> SweepContext:
        return SweepContext(
            settings=self.settings,
            db=self.db,
            keyring=self.keyring,
            sources=self.registry.sources,
            requests=self.dispatcher,
            actor="bench",
        )

    def run(self, policy: str = POLICY) -> tuple[int, list[float]]:
        counts = run_inline(self.ctx(), policy, trigger="bench").counts or {}
        return int(counts.get("deleted", 0)), [float(ms) for ms in counts.get("batch_ms", [])]


def cutoff() -> datetime:
    return datetime.now(UTC) - timedelta(days=DAYS)


def plain_delete(app: URL) -> tuple[int, list[float]]:
    with psycopg.connect(**conninfo(app)) as conn:
        began = time.perf_counter()
        deleted = conn.execute("DELETE FROM events WHERE created_at < %s", (cutoff(),)).rowcount
        conn.commit()
        return deleted, [(time.perf_counter() - began) * 1000]


def range_loop(app: URL, batch: int) -> tuple[int, list[float]]:
    with psycopg.connect(**conninfo(app), autocommit=True) as conn:  # COMMIT inside CALL
        row = conn.execute("CALL sweep_by_range(%s, %s)", (cutoff(), batch)).fetchone()
    assert row is not None
    return int(row[0]), [float(row[2])]


# --- the concurrent writer -------------------------------------------------------------


KINDS = ("update", "insert", "old_row")


def writer_main(
    info: dict[str, Any], rows: int, rate: float, old: bool, ready: Event, stop: Event, out: Any
) -> None:
    """Small transactions on `events` until `stop`, (kind, started, ms) of each: fresh-row
    updates and inserts in turn, or (`old`) updates of expired rows."""
    rng = random.Random(rows + old)
    done: list[tuple[int, float, float]] = []
    next_id, period = rows + 1, 1 / rate
    with psycopg.connect(**info) as conn:
        ready.set()
        while not stop.is_set():
            kind = 2 if old else len(done) % 2
            began = time.monotonic()  # system-wide on Linux: comparable across processes
            if kind == 0:
                fresh = rng.randrange(2, rows + 1, 2)
                conn.execute("UPDATE events SET payload = 'x' WHERE id = %s", (fresh,))
            elif kind == 1:
                conn.execute("INSERT INTO events VALUES (%s, 1, now(), 'x')", (next_id,))
                next_id += 1
            else:
                expired = rng.randrange(1, rows + 1, 2)
                conn.execute("UPDATE events SET payload = 'y' WHERE id = %s", (expired,))
            conn.commit()
            spent = time.monotonic() - began
            done.append((kind, began, spent * 1000))
            time.sleep(max(0.0, period - spent))
    out.put(done)


@contextmanager
def writer(app: URL, rows: int, rate: float) -> Iterator[list[tuple[int, float, float]]]:
    """Two writer processes (fresh rows; expired rows), each on its own connection, for
    the duration of the block; their transactions when it ends."""
    found: list[tuple[int, float, float]] = []
    if rate <= 0:
        yield found
        return
    spawn = multiprocessing.get_context("spawn")
    stop, out = spawn.Event(), spawn.Queue()
    started = []
    for old in (False, True):
        ready = spawn.Event()
        process = spawn.Process(
            target=writer_main,
            args=(conninfo(app), rows, rate, old, ready, stop, out),
            daemon=True,
        )
        process.start()
        started.append(process)
        if not ready.wait(60):
            stop.set()
            raise SystemExit("a writer process did not connect within 60 s")
    time.sleep(0.2)  # running before the variant starts
    try:
        yield found
    finally:
        stop.set()
        for process in started:
            found.extend(out.get(timeout=60))
            process.join(30)


def during(
    done: list[tuple[int, float, float]], began: float, ended: float
) -> dict[str, list[float]]:
    """Latencies (ms) by kind of the writer's transactions that overlap [began, ended]."""
    found: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for kind, start, ms in done:
        if start <= ended and start + ms / 1000 >= began:
            found[KINDS[kind]].append(ms)
    return found


def measure(
    variant: Variant, run: Callable[[], tuple[int, list[float]]], app: URL, args: Any
) -> None:
    fill(app, args.rows)
    with writer(app, args.rows, args.writer_rate) as done:
        began = time.monotonic()
        deleted, batch_ms = run()
        ended = time.monotonic()
    expected = (args.rows + 1) // 2
    if deleted != expected:
        raise SystemExit(f"{variant.name}: deleted {deleted} rows, expected {expected}")
    variant.deleted.append(deleted)
    variant.seconds.append(ended - began)
    variant.batch_ms.extend(batch_ms)
    variant.writer.append(during(done, began, ended))


def peak_heap(sweep: Sweep, app: URL, rows: int) -> float:
    """Peak Python heap (MiB) of one more, untimed run of ours (tracing slows Python)."""
    fill(app, rows)
    tracemalloc.start()
    try:
        sweep.run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


# --- subjects: the sweep hands accounts to erasure, two Celery worker processes -------


def subject_sweep(sweep: Sweep, app: URL, count: int) -> dict[str, float]:
    """`count` accounts closed two years ago: handed to erasure by the sweep, erased by a
    Celery worker with two processes; subjects/s from the sweep's start to the last."""
    import redis

    from tasks.app import configure
    from tasks.dispatch import CeleryDispatcher

    broker = redis.Redis.from_url(BROKER_URL)
    if broker.dbsize():
        raise SystemExit(f"{BROKER_URL} is not empty; set GDPR_BENCH_BROKER_URL to a free db")
    with psycopg.connect(**conninfo(app), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users SELECT g, 'u' || g || '@example.com', now() - interval '730 days'"
            " FROM generate_series(1, %s) g",
            (count,),
        )
    sweep.dispatcher = CeleryDispatcher(configure(sweep.settings))
    log = sweep.settings.home.parent / "worker.log"
    try:
        with celery_worker(worker_environment(sweep.settings), log):
            began = time.perf_counter()
            sweep.run(SUBJECT_POLICY)
            dispatched = time.perf_counter() - began
            wait_for_erasures(sweep.db, count, log)
            seconds = time.perf_counter() - began
    finally:
        names = list(broker.scan_iter())
        if names:
            broker.unlink(*names)
        broker.close()
    return {
        "subjects": count,
        "subject_dispatch_s": round(dispatched, 2),
        "subject_total_s": round(seconds, 2),
        "subjects_per_s": round(count / seconds, 1),
    }


@contextmanager
def celery_worker(env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [GDPR, "worker", "-c", "2", "-Q", "requests", "-l", "INFO"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while "ready." not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the Celery worker did not start; see {log}")
                time.sleep(0.2)
            yield
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_for_erasures(db: Database, count: int, log: Path) -> None:
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        with db.session() as session:
            rows = session.execute(
                select(DsrRequest.status, func.count()).group_by(DsrRequest.status)
            ).all()
        done = {status: int(n) for status, n in rows}
        if done.get("failed"):
            raise SystemExit(f"{done['failed']} erasure(s) failed; see {log}")
        if done.get("completed", 0) >= count:
            return
        time.sleep(0.1)
    raise SystemExit(f"erasures did not complete within an hour; see {log}")


# --- report ---------------------------------------------------------------------------


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0.0


def writer_stats(variant: Variant) -> dict[str, float]:
    every = [ms for run in variant.writer for kind in run.values() for ms in kind]
    fresh = [ms for run in variant.writer for k in ("update", "insert") for ms in run.get(k, [])]
    old = [ms for run in variant.writer for ms in run.get("old_row", [])]
    return {
        "writer_txns": len(every),
        "writer_fresh_p99_ms": round(p99(fresh), 1),
        "writer_fresh_max_ms": round(max(fresh, default=0.0), 1),
        "writer_old_row_p99_ms": round(p99(old), 1),
        "writer_old_row_max_ms": round(max(old, default=0.0), 1),
        "writer_max_ms": round(max(every, default=0.0), 1),
    }


def summary(variant: Variant) -> dict[str, Any]:
    found = {
        "deleted": variant.deleted[0],
        "seconds": round(statistics.median(variant.seconds), 3),
        "seconds_each": [round(x, 3) for x in variant.seconds],
        "rows_per_s": round(variant.rate()),
        "max_batch_ms": round(max(variant.batch_ms, default=0.0), 1),
        **writer_stats(variant),
    }
    if variant.name == "ours":  # the anchors report one duration per run
        found["p99_batch_ms"] = round(p99(variant.batch_ms), 1)
        found["share_in_batches"] = round(sum(variant.batch_ms) / 1000 / sum(variant.seconds), 2)
    return found


def paired(mine: Variant, anchor: Variant) -> float:
    """Median of the per-repeat throughput ratios (same moment, same load)."""
    return statistics.median(
        (d / s) / (ad / a_s)
        for d, s, ad, a_s in zip(
            mine.deleted, mine.seconds, anchor.deleted, anchor.seconds, strict=True
        )
    )


def report(variants: dict[str, Variant], extra: dict[str, Any], args: Any) -> dict[str, Any]:
    ours, plain, loop = variants["ours"], variants["plain"], variants["loop"]
    result: dict[str, Any] = {
        "rows": args.rows,
        "expired": (args.rows + 1) // 2,
        "batch": args.batch,
        "repeat": args.repeat,
        "writer_rate": args.writer_rate,
        "variants": {name: summary(v) for name, v in variants.items()},
        "ratio_ours_over_plain_delete": round(paired(ours, plain), 3),
        "ratio_ours_over_range_loop": round(paired(ours, loop), 3),
        **extra,
        "load_average": os.getloadavg()[0],
    }
    mine = result["variants"]["ours"]
    result["goals"] = {
        f"throughput >= {GOAL_RATIO}x single DELETE": result["ratio_ours_over_plain_delete"]
        >= GOAL_RATIO,
        f"max batch <= {GOAL_BATCH_MS:.0f} ms": mine["max_batch_ms"] <= GOAL_BATCH_MS,
        f"writer waits <= {GOAL_WRITER_MS:.0f} ms": args.writer_rate <= 0
        or mine["writer_max_ms"] <= GOAL_WRITER_MS,
    }
    return result


LABELS = {
    "ours": "ours (run_inline)",
    "plain": "one DELETE",
    "loop": "PL/pgSQL range loop",
}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def print_report(result: dict[str, Any]) -> None:
    print(
        f"retention sweep of {result['rows']} rows ({result['expired']} expired),"
        f" batch {result['batch']}, medians of {result['repeat']},"
        f" writers 2 x {result['writer_rate']:g} txn/s"
    )
    print(
        f"{'variant':20} {'deleted':>8} {'seconds':>8} {'rows/s':>9} {'max batch':>10}"
        f" {'p99 batch':>10} {'writer p99':>11} {'writer max':>11} {'old-row max':>12}"
    )
    for name, row in result["variants"].items():
        print(
            f"{LABELS[name]:20} {row['deleted']:>8} {row['seconds']:>8.2f} {row['rows_per_s']:>9}"
            f" {row['max_batch_ms']:>8.1f}ms {_ms(row.get('p99_batch_ms')):>10}"
            f" {row['writer_fresh_p99_ms']:>9.1f}ms {row['writer_fresh_max_ms']:>9.1f}ms"
            f" {row['writer_old_row_max_ms']:>10.1f}ms"
        )
    print(
        "(one DELETE: its batch is its one transaction; writer: fresh-row updates and"
        " inserts; old-row: the other writer's updates of expired rows)"
    )
    print(
        f"throughput ours / one DELETE {result['ratio_ours_over_plain_delete']}"
        f" (goal >= {GOAL_RATIO}), ours / range loop {result['ratio_ours_over_range_loop']}"
    )
    mine = result["variants"]["ours"]
    print(
        f"our batch transactions: max {mine['max_batch_ms']} ms, p99 {mine['p99_batch_ms']} ms"
        f" (goal max <= {GOAL_BATCH_MS:.0f}), {mine['share_in_batches']:.0%} of our time;"
        " writers during our sweep: max"
        f" {mine['writer_max_ms']} ms over {mine['writer_txns']} txns"
        f" (goal <= {GOAL_WRITER_MS:.0f})"
    )
    print(
        f"peak Python heap of our sweep {result['peak_python_heap_mib']} MiB;"
        f" peak RSS of this process {result['peak_rss_mib']} MiB"
    )
    if "subjects_per_s" in result:
        print(
            f"subject sweep: {result['subjects']} accounts handed to erasure and erased by"
            f" 2 Celery worker processes: {result['subjects_per_s']} subjects/s"
            f" (sweep done after {result['subject_dispatch_s']} s,"
            f" last erasure after {result['subject_total_s']} s)"
        )
    missed = [goal for goal, ok in result["goals"].items() if not ok]
    print("goals: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    print(
        f"note: shared, noisy machine (load average {result['load_average']:.2f}):"
        " compare the ratios within one run, never numbers across runs"
    )


# --- main -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument(
        "--parts", type=int, default=defaults.RETENTION_PARTS, help="key ranges swept side by side"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--writer-rate", type=float, default=100.0, help="txn/s per writer")
    parser.add_argument("--subjects", type=int, default=0, help="accounts; 0: skip")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with scratch_databases(server_url()) as (app, control), our_sweep(app, control, args) as sweep:
        variants = run_all(sweep, app, args)
        extra: dict[str, Any] = {"peak_python_heap_mib": round(peak_heap(sweep, app, args.rows), 1)}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        extra["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
        if args.subjects:
            extra.update(subject_sweep(sweep, app, args.subjects))
    result = report(variants, extra, args)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if all(result["goals"].values()) else 1


@contextmanager
def our_sweep(app: URL, control: URL, args: Any) -> Iterator[Sweep]:
    """Settings, control database (migrated) and registry for the manifest of `app`."""
    folder = Path(tempfile.mkdtemp(prefix="gdpr-bench-retention-"))
    manifest = folder / "sources.toml"
    body = MANIFEST.format(url=app.render_as_string(hide_password=False), days=DAYS)
    manifest.write_text(body + (SUBJECT_TABLE if args.subjects else ""), encoding="utf-8")
    settings = Settings(
        home=folder / ".gdpr",
        database_url=control.render_as_string(hide_password=False),
        broker_url=BROKER_URL,
        sources=str(manifest),
        operator="bench",
        retention_batch_size=args.batch,
        retention_parts=args.parts,
        keys=new_key_line("bench-1"),
        pseudonym_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    fill(app, 1)  # the tables must exist before the registry reflects them
    if args.subjects:
        with psycopg.connect(**conninfo(app), autocommit=True) as conn:
            conn.execute(USERS)
    db = Database.connect(settings)
    try:
        db.upgrade()
        keyring = load_keyring(settings)
        registry = load_registry(settings, environ={}, pseudonym_key=keyring.pseudonym_key)
        try:
            yield Sweep(settings, db, keyring, registry, RecordingDispatcher())
        finally:
            registry.close()
    finally:
        db.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def run_all(sweep: Sweep, app: URL, args: Any) -> dict[str, Variant]:
    variants = {name: Variant(name) for name in ("ours", "plain", "loop")}
    runs: dict[str, Callable[[], tuple[int, list[float]]]] = {
        "ours": sweep.run,
        "plain": lambda: plain_delete(app),
        "loop": lambda: range_loop(app, args.batch),
    }
    names = list(variants)
    for repeat in range(args.repeat):
        turn = repeat % len(names)
        for name in names[turn:] + names[:turn]:  # rotate: no side always goes first
            measure(variants[name], runs[name], app, args)
    return variants


def worker_environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
    env.update(
        {
            "GDPR_HOME": str(settings.home),
            "GDPR_DATABASE_URL": settings.database_url,
            "GDPR_BROKER_URL": BROKER_URL,
            "GDPR_SOURCES": settings.sources,
            "GDPR_OPERATOR": "bench",
            "GDPR_KEYS": settings.keys,
            "GDPR_PSEUDONYM_KEY": settings.pseudonym_key,
        }
    )
    return env


if __name__ == "__main__":
    sys.exit(main())
