"""Small export requests against a bare Celery no-op: same broker, same 2-process worker.

    .venv/bin/python bench/request_overhead.py [--requests 200] [--repeat 3] [--json]

One `gdpr worker -c 2 -Q requests` runs on Redis with a PostgreSQL control database and
one tiny SQLite source (a `users` table, one row per subject). The worker also imports
this module, which adds one task: `bench.noop`, whose body is a single Redis `INCR` (the
only way for the client to see that it ran, since the app keeps no results).

Measured, in this run, on this worker:

- bursts: `--requests` export requests submitted at once through `compliance.requests.submit`
  (what `gdpr request export` calls), from the first submit to the last `completed_at`;
  and as many no-op tasks sent at once, from the first send to the last `INCR`. Printed:
  req/s of each and the ratio (no-op rate / request rate; goal: within 5x);
- single: requests (and no-ops) one at a time, submit -> completed, median;
- task time: median `started_at -> completed_at` of the burst's requests;
- per request, run once in this process on the same databases: control-DB statements,
  transactions and audit events of the worker side, and of the submission;
- peak RSS (VmHWM) of the worker's processes.

Names: GDPR_BENCH_PG_URL, or GDPR_BENCH_PG_HOST / _PORT / _USER (default
postgres@127.0.0.1:5432); the scratch control database `<GDPR_BENCH_DB>_control` (default
`gdpr_bench_overhead_<random>`) is created and dropped. GDPR_BENCH_BROKER_URL (default
redis://127.0.0.1:6379/13) must name an empty Redis database; it is emptied again at the
end. GDPR_BENCH_MAIL_URL and GDPR_BENCH_STORAGE_URL override the outbox folder and the
package folder under the run's temporary home. The exit code is 1 when the goal is missed.

`measure_overhead` is the core: another benchmark with its own settings, worker and
submissions calls it (inside `overhead_worker`) to print the same ratio.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasks.app import app as celery_app  # noqa: E402

NOOP_TASK = "bench.noop"
GOAL_RATIO = 5.0
GDPR = str(Path(sys.executable).with_name("gdpr"))
BROKER_URL = os.environ.get("GDPR_BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
_counter: dict[str, Any] = {}


@celery_app.task(name=NOOP_TASK, acks_late=True, ignore_result=True)
def noop(counter: str) -> None:
    """The anchor: one Redis INCR, so the client can see it ran."""
    if "client" not in _counter:
        import redis

        _counter["client"] = redis.Redis.from_url(celery_app.conf.broker_url)
    _counter["client"].incr(counter)


# --- the reusable core ------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """`count` items sent at once, all done `seconds` later."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Overhead:
    """Requests against the no-op, same broker, same worker, same run."""

    requests: Burst
    noop: Burst
    request_single_ms: float
    noop_single_ms: float
    task_ms: float  # median started_at -> completed_at of the burst's requests
    worker_rss_mib: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.noop.rate / self.requests.rate if self.requests.rate else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "request_rate": round(self.requests.rate, 1),
            "noop_rate": round(self.noop.rate, 1),
            "ratio": round(self.ratio, 2),
        }

    def lines(self) -> list[str]:
        rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in self.worker_rss_mib.items())
        return [
            f"  {self.requests.count} small exports at once: {self.requests.rate:.1f} req/s"
            f"  (median task {self.task_ms:.1f} ms, one at a time {self.request_single_ms:.1f} ms)",
            f"  {self.noop.count} bare no-op tasks at once: {self.noop.rate:.1f} /s"
            f"  (one at a time {self.noop_single_ms:.1f} ms)",
            f"  ratio no-op / requests: {self.ratio:.2f}x  (goal <= {GOAL_RATIO:g}x)",
            f"  peak worker RSS: {rss}",
        ]


Submit = Callable[[int], uuid.UUID]  # submit request number i; returns its id


def measure_overhead(
    db: Any,  # compliance.db.Database: the control database the worker uses
    submit: Submit,
    *,
    count: int,
    singles: int = 20,
    worker_pid: int | None = None,
    first: int = 0,
) -> Overhead:
    """Both bursts and both single-request medians on the running worker (see
    `overhead_worker`); `submit(i)` submits request `first + i`, each a distinct subject."""
    counter = f"bench:noop:{uuid.uuid4().hex}"
    redis_client = _broker_client()
    try:
        for i in range(3):  # warm both: the worker's processes build their runtime
            _wait_requests(db, [submit(first + i)])
        first += 3
        noop_single = statistics.median(
            _noop_burst(redis_client, counter, 1).seconds * 1000 for _ in range(singles)
        )
        req_single = statistics.median(
            _single_request(db, submit, first + i) for i in range(singles)
        )
        first += singles
        noop_burst = _noop_burst(redis_client, counter, count)
        ids, burst = _request_burst(db, submit, first, count)
        task_ms = _task_ms(db, ids)
    finally:
        redis_client.delete(counter)
        redis_client.close()
    rss = worker_rss_mib(worker_pid) if worker_pid else {}
    return Overhead(burst, noop_burst, req_single, noop_single, task_ms, rss)


def _broker_client() -> Any:
    import redis

    return redis.Redis.from_url(celery_app.conf.broker_url or BROKER_URL)


def _noop_burst(client: Any, counter: str, count: int) -> Burst:
    target = int(client.get(counter) or 0) + count
    began = time.perf_counter()
    for _ in range(count):
        celery_app.send_task(NOOP_TASK, args=[counter], queue="requests")
    while int(client.get(counter) or 0) < target:
        time.sleep(0.001)
    return Burst(count, time.perf_counter() - began)


def _single_request(db: Any, submit: Submit, number: int) -> float:
    """Milliseconds from submitting request `number` to its `completed_at`."""
    began = time.time()
    request_id = submit(number)
    return (_wait_requests(db, [request_id]) - began) * 1000


def _request_burst(
    db: Any, submit: Submit, first: int, count: int
) -> tuple[list[uuid.UUID], Burst]:
    began = time.time()
    ids = [submit(first + i) for i in range(count)]
    finished = _wait_requests(db, ids)
    return ids, Burst(count, finished - began)


def _wait_requests(db: Any, ids: Sequence[uuid.UUID], timeout: float = 600) -> float:
    """Wait until every request completed; returns the last `completed_at` (epoch)."""
    from sqlalchemy import func, select

    from compliance.models import DsrRequest

    deadline = time.monotonic() + timeout
    wanted = list(ids)
    while time.monotonic() < deadline:
        with db.session() as session:
            row = session.execute(
                select(
                    func.count().filter(DsrRequest.status == "completed"),
                    func.count().filter(DsrRequest.status == "failed"),
                    func.max(DsrRequest.completed_at),
                ).where(DsrRequest.id.in_(wanted))
            ).one()
        done, failed, last = int(row[0]), int(row[1]), row[2]
        if failed:
            raise SystemExit(f"{failed} request(s) failed; see the worker log")
        if done == len(wanted):
            assert isinstance(last, datetime)
            return last.timestamp()
        # completed_at, not the poll, marks the end; a poll (a count over every id of the
        # burst) every 10 ms took half a CPU from the worker it was timing
        time.sleep(0.1)
    raise SystemExit(f"requests did not complete within {timeout:g}s")


def _task_ms(db: Any, ids: Sequence[uuid.UUID]) -> float:
    from sqlalchemy import select

    from compliance.models import DsrRequest

    with db.session() as session:
        rows = session.execute(
            select(DsrRequest.started_at, DsrRequest.completed_at).where(
                DsrRequest.id.in_(list(ids))
            )
        ).all()
    return statistics.median((done - began).total_seconds() * 1000 for began, done in rows)


def worker_rss_mib(pid: int) -> dict[str, float]:
    """Peak RSS (VmHWM) of a Celery worker's main process and its largest pool child."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(child) for child in text]
    peaks = {"main": _vm_hwm(pid)}
    if children:
        peaks["child (max)"] = max(_vm_hwm(child) for child in children)
    return peaks


def _vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def overhead_worker(
    env: Mapping[str, str], log: Path, concurrency: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """`gdpr worker -c 2 -Q requests` with `bench.noop` registered; stopped at the end."""
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}
    argv = [GDPR, "worker", "-c", str(concurrency), "-Q", "requests", "-l", "WARNING"]
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [*argv, "-I", "bench.request_overhead"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(process, log)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _wait_ready(process: subprocess.Popen[bytes], log: Path) -> None:
    """Ready when the pool answers: a no-op sent now runs."""
    client = _broker_client()
    counter = f"bench:ready:{uuid.uuid4().hex}"
    deadline = time.monotonic() + 60
    sent = 0.0
    try:
        while not client.get(counter):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the Celery worker did not start; see {log}")
            if time.monotonic() - sent > 5:
                celery_app.send_task(NOOP_TASK, args=[counter], queue="requests")
                sent = time.monotonic()
            time.sleep(0.1)
    finally:
        client.delete(counter)
        client.close()


def worker_environment(settings: Any) -> dict[str, str]:
    """The `gdpr` environment of a worker for these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
    values = {
        "GDPR_HOME": str(settings.home),
        "GDPR_DATABASE_URL": settings.database_url,
        "GDPR_BROKER_URL": settings.broker_url,
        "GDPR_STORAGE_URL": settings.storage_url,
        "GDPR_MAIL_URL": settings.mail_url,
        "GDPR_SOURCES": settings.sources,
        "GDPR_OPERATOR": settings.operator,
        "GDPR_KEYS": settings.keys,
        "GDPR_PSEUDONYM_KEY": settings.pseudonym_key,
    }
    env.update({k: v for k, v in values.items() if v})
    return env


# --- control-database work of one request, counted in this process ----------------------


@dataclass
class StatementCount:
    statements: int = 0
    transactions: int = 0

    def listen(self, engine: Any) -> Callable[[], None]:
        from sqlalchemy import event

        def statement(*_: Any) -> None:
            self.statements += 1

        def commit(*_: Any) -> None:
            self.transactions += 1

        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine, "commit", commit)

        def stop() -> None:
            event.remove(engine, "before_cursor_execute", statement)
            event.remove(engine, "commit", commit)

        return stop


def count_one_request(settings: Any, db: Any, submit: Submit, number: int) -> dict[str, Any]:
    """Control-DB statements and commits (and audit events) of one request: its submission
    on `db` (the database `submit` uses), and its run by `compliance.worker.execute` in
    this process (no broker)."""
    from sqlalchemy import func, select

    from compliance.models import AuditEvent
    from compliance.worker import Outcome, execute
    from tasks import runtime

    worker = runtime.build_worker(runtime.Control(settings, db, _keyring(settings)))
    worker = dataclasses.replace(worker, continuation=None)
    submitted, ran = StatementCount(), StatementCount()
    try:
        stop = submitted.listen(db.engine)
        request_id = submit(number)
        stop()
        stop = ran.listen(db.engine)
        outcome = execute(worker, request_id)
        stop()
    finally:
        for source in worker.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    if outcome != Outcome.COMPLETED:
        raise SystemExit(f"the counted request ended {outcome}")
    with db.session() as session:
        audits = session.scalar(select(func.count()).where(AuditEvent.request_id == request_id))
    return {"submit": asdict(submitted), "run": asdict(ran), "audit_events": int(audits or 0)}


def _keyring(settings: Any) -> Any:
    from compliance.keyring import load_keyring

    return load_keyring(settings)


# --- this benchmark's setup: scratch control database, tiny source ----------------------


def server_url() -> Any:
    from sqlalchemy.engine import URL, make_url

    if os.environ.get("GDPR_BENCH_PG_URL"):
        return make_url(os.environ["GDPR_BENCH_PG_URL"]).set(drivername="postgresql+psycopg")
    return URL.create(
        "postgresql+psycopg",
        username=os.environ.get("GDPR_BENCH_PG_USER", "postgres"),
        host=os.environ.get("GDPR_BENCH_PG_HOST", "127.0.0.1"),
        port=int(os.environ.get("GDPR_BENCH_PG_PORT", "5432")),
        database="postgres",
    )


@contextmanager
def scratch_control_database(server: Any) -> Iterator[Any]:
    """`<GDPR_BENCH_DB>_control`, created for this run and dropped at the end."""
    import psycopg

    base = os.environ.get("GDPR_BENCH_DB") or f"gdpr_bench_overhead_{secrets.token_hex(4)}"
    name = f"{base}_control"
    info = {"host": server.host, "port": server.port, "user": server.username}
    if server.password:
        info["password"] = server.password
    with psycopg.connect(dbname=server.database, autocommit=True, **info) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name)
        finally:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{name[:53]}_operators"')  # migration 0002's


MANIFEST = """\
[sources.app]
kind = "sql"
url = "sqlite:///app.db"

[sources.app.tables.users]
identities = { email = "email", id = "user_id" }
"""


def tiny_source(folder: Path, subjects: int) -> Path:
    """One SQLite database whose `users` hold one row per subject; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "app.db") as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.executemany(
            "INSERT INTO users VALUES (?, ?)",
            ((i, f"user{i}@example.com") for i in range(subjects)),
        )
    conn.close()
    path = folder / "sources.toml"
    path.write_text(MANIFEST, encoding="utf-8")
    return path


def bench_settings(folder: Path, control: Any, manifest: Path) -> Any:
    from compliance.config import Settings
    from compliance.keyring import new_key_line

    return Settings(
        home=folder / ".gdpr",
        database_url=control.render_as_string(hide_password=False),
        broker_url=BROKER_URL,
        storage_url=os.environ.get("GDPR_BENCH_STORAGE_URL", ""),
        mail_url=os.environ.get("GDPR_BENCH_MAIL_URL", ""),
        sources=str(manifest),
        operator="bench",
        keys=new_key_line("bench-1"),
        pseudonym_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )


def export_submitter(settings: Any, db: Any) -> Submit:
    """Submit an export of `user<i>@example.com` as `gdpr request export` does."""
    from compliance.db import utcnow
    from compliance.identities import Identities, parse_identity
    from compliance.keyring import load_keyring
    from compliance.models import RequestKind
    from compliance.requests import Submission, submit
    from compliance.sources.registry import load_registry
    from tasks.app import configure
    from tasks.dispatch import CeleryDispatcher

    keyring = load_keyring(settings)
    registry = load_registry(
        settings, environ={}, pseudonym_key=keyring.pseudonym_key, connect=False
    )
    dispatcher = CeleryDispatcher(configure(settings))

    def run(number: int) -> uuid.UUID:
        identities = Identities.of([parse_identity("email", f"user{number}@example.com")])
        request = submit(
            db,
            settings,
            keyring,
            Submission(kind=RequestKind.EXPORT, identities=identities, ticket=f"B-{number}"),
            sources=registry.sources,
            operator="bench",
            now=utcnow(),
            dispatcher=dispatcher,
        )
        return request.id

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per burst")
    parser.add_argument("--singles", type=int, default=20, help="one-at-a-time requests")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run_bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if result["ratio"] <= GOAL_RATIO else 1


def run_bench(args: Any) -> dict[str, Any]:
    import redis

    from compliance.db import Database

    broker = redis.Redis.from_url(BROKER_URL)
    if broker.dbsize():
        raise SystemExit(f"{BROKER_URL} is not empty; set GDPR_BENCH_BROKER_URL to a free db")
    folder = Path(tempfile.mkdtemp(prefix="gdpr-bench-overhead-"))
    per_repeat = 3 + args.singles + args.requests
    try:
        with scratch_control_database(server_url()) as control:
            manifest = tiny_source(folder / "source", 1 + per_repeat * args.repeat)
            settings = bench_settings(folder, control, manifest)
            db = Database.connect(settings)
            try:
                db.upgrade()
                submit = export_submitter(settings, db)
                counted = count_one_request(settings, db, submit, 0)
                runs = []
                with overhead_worker(worker_environment(settings), folder / "worker.log") as w:
                    for repeat in range(args.repeat):
                        runs.append(
                            measure_overhead(
                                db,
                                submit,
                                count=args.requests,
                                singles=args.singles,
                                worker_pid=w.pid,
                                first=1 + repeat * per_repeat,
                            )
                        )
            finally:
                db.dispose()
    finally:
        names = list(broker.scan_iter())
        if names:
            broker.unlink(*names)
        broker.close()
        shutil.rmtree(folder, ignore_errors=True)
    return summarise(runs, counted)


def summarise(runs: list[Overhead], counted: dict[str, Any]) -> dict[str, Any]:
    best = sorted(runs, key=lambda r: r.ratio)[len(runs) // 2]  # the median run by ratio
    return {
        "ratio": round(best.ratio, 2),
        "ratios": [round(r.ratio, 2) for r in runs],
        "median_run": best.to_dict(),
        "per_request": counted,
    }


def print_report(result: dict[str, Any]) -> None:
    run = result["median_run"]
    print("Small export requests against a bare Celery no-op (2 worker processes, Redis):")
    print(f"  ratios per repeat: {', '.join(f'{r:.2f}x' for r in result['ratios'])}")
    print(f"  median run: {run['request_rate']} req/s against {run['noop_rate']} no-ops/s")
    print(
        f"  per request: {run['task_ms']:.1f} ms median task,"
        f" {run['request_single_ms']:.1f} ms one at a time"
        f" (no-op {run['noop_single_ms']:.1f} ms)"
    )
    per = result["per_request"]
    print(
        f"  control DB per request: submit {per['submit']['statements']} statements in"
        f" {per['submit']['transactions']} transactions; run {per['run']['statements']}"
        f" statements in {per['run']['transactions']} transactions;"
        f" {per['audit_events']} audit events"
    )
    rss = ", ".join(f"{k} {v:.0f} MiB" for k, v in run["worker_rss_mib"].items())
    print(f"  peak worker RSS: {rss}")
    print(f"  ratio {result['ratio']:.2f}x (goal <= {GOAL_RATIO:g}x)")


if __name__ == "__main__":
    sys.exit(main())
