"""`gdpr worker`, counting what its processes do, for `bench/requests_at_scale.py`.

    .venv/bin/python bench/scale_worker.py STATS_DIR -c 2 -Q requests

Runs exactly `gdpr worker <the other args>` (same app, settings from the environment, manifest
checked first) after three bench-only additions, installed before the pool forks:

- psycopg's ``Cursor`` and ``ServerCursor`` ``execute``/``executemany`` are counted and
  timed per database, and their ``fetchone``/``fetchmany``/``fetchall`` timed too (a
  server-side cursor does its work while fetching), outermost call only; also per
  statement shape (its SQL text, placeholders and all, cut at 160 characters: the values
  are bound, never in the text);
- ``task_prerun``/``task_postrun`` time every task; after each task the process writes
  its running totals to ``STATS_DIR/<pid>.json`` (replaced atomically), so the bench reads
  them without talking to the worker;
- the no-op task of `bench/request_overhead.py` (``bench.noop``, one Redis ``INCR``: the
  anchor of the per-request overhead), by importing that module.

When the worker is ready it writes ``STATS_DIR/ready``. This module is never imported by the
project; the counting costs a few microseconds per statement.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

READY = "ready"
SHAPE_CHARS = 160


class Totals:
    """One process's running totals, each [count, seconds]: per database (statements,
    time in SQL), per "database: statement shape", per task name (tasks, time)."""

    def __init__(self) -> None:
        self.sql: dict[str, list[float]] = {}
        self.shapes: dict[str, list[float]] = {}
        self.tasks: dict[str, list[float]] = {}
        self.started: dict[str, float] = {}
        self.local = threading.local()
        self.cursors: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def add_sql(self, database: str, shape: str, statements: int, seconds: float) -> None:
        for totals, key in ((self.sql, database), (self.shapes, f"{database}: {shape}")):
            entry = totals.setdefault(key, [0, 0.0])
            entry[0] += statements
            entry[1] += seconds

    def add_task(self, name: str, seconds: float) -> None:
        entry = self.tasks.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def write(self, folder: Path) -> None:
        target = folder / f"{os.getpid()}.json"
        scratch = folder / f".{os.getpid()}.tmp"
        found = {"sql": self.sql, "shapes": self.shapes, "tasks": self.tasks}
        scratch.write_text(json.dumps(found))
        os.replace(scratch, target)


TOTALS = Totals()


def _measured(original: Callable[..., Any], statements: int) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(TOTALS.local, "inside", False):  # one psycopg method calling another
            return original(self, *args, **kwargs)
        if statements:
            TOTALS.cursors[self] = _shape(args[0] if args else kwargs.get("query"))
        TOTALS.local.inside = True
        began = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            TOTALS.local.inside = False
            shape = TOTALS.cursors.get(self, "?")
            TOTALS.add_sql(_database(self), shape, statements, time.perf_counter() - began)

    return wrapper


def _shape(query: Any) -> str:
    if isinstance(query, bytes):
        query = query.decode(errors="replace")
    if not isinstance(query, str):
        return type(query).__name__
    return " ".join(query.split())[:SHAPE_CHARS]


def _database(cursor: Any) -> str:
    try:
        return str(cursor.connection.info.dbname)
    except Exception:  # a closed connection: the statement still counts
        return "?"


def count_statements() -> None:
    import psycopg

    for cls in (psycopg.Cursor, psycopg.ServerCursor):
        for name, statements in (("execute", 1), ("executemany", 1)):
            setattr(cls, name, _measured(cls.__dict__[name], statements))
        for name in ("fetchone", "fetchmany", "fetchall"):
            setattr(cls, name, _measured(cls.__dict__[name], 0))


def time_tasks(folder: Path) -> None:
    from celery import signals

    def prerun(task_id: str, **_: Any) -> None:
        TOTALS.started[task_id] = time.perf_counter()

    def postrun(task_id: str, task: Any, **_: Any) -> None:
        began = TOTALS.started.pop(task_id, None)
        if began is not None:
            TOTALS.add_task(task.name, time.perf_counter() - began)
        TOTALS.write(folder)

    def ready(**_: Any) -> None:
        (folder / READY).write_text(str(os.getpid()))

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)
    signals.worker_ready.connect(ready, weak=False)


def main() -> None:
    folder = Path(sys.argv.pop(1))
    count_statements()
    time_tasks(folder)
    import bench.request_overhead  # noqa: F401  (registers its no-op task on the app)
    from compliance.cli.main import main as gdpr

    sys.argv = ["gdpr", "worker", *sys.argv[1:]]
    gdpr()


if __name__ == "__main__":
    main()


# --- the bench's side: reading what the worker wrote -------------------------------------


@dataclass
class Snapshot:
    """The sum of every worker process's totals at one moment (`Totals`' maps)."""

    sql: dict[str, list[float]]
    tasks: dict[str, list[float]]
    shapes: dict[str, list[float]]

    @classmethod
    def read(cls, folder: Path) -> Snapshot:
        found = cls({}, {}, {})
        for path in folder.glob("[0-9]*.json"):
            written = json.loads(path.read_text())
            _merge(found.sql, written["sql"])
            _merge(found.tasks, written["tasks"])
            _merge(found.shapes, written["shapes"])
        return found

    def minus(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(
            _subtract(self.sql, earlier.sql),
            _subtract(self.tasks, earlier.tasks),
            _subtract(self.shapes, earlier.shapes),
        )

    def slowest(self, prefix: str, count: int) -> list[tuple[str, list[float]]]:
        """The `count` statement shapes whose keys start with `prefix` that took longest."""
        mine = [(k[len(prefix) :], v) for k, v in self.shapes.items() if k.startswith(prefix)]
        return sorted(mine, key=lambda kv: -kv[1][1])[:count]


def _merge(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for key, (count, seconds) in more.items():
        entry = into.setdefault(key, [0, 0.0])
        entry[0] += count
        entry[1] += seconds


def _subtract(now: dict[str, list[float]], then: dict[str, list[float]]) -> dict[str, list[float]]:
    found = {}
    for key, (count, seconds) in now.items():
        before = then.get(key, [0, 0.0])
        found[key] = [count - before[0], seconds - before[1]]
    return found


def settled(folder: Path, quiet: float = 0.3, limit: float = 30.0) -> Snapshot:
    """The totals once no process has written for `quiet` seconds (a task that marked
    its request completed writes its totals a moment later)."""
    deadline = time.monotonic() + limit
    last = Snapshot.read(folder)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = Snapshot.read(folder)
        if now == last:
            return now
        last = now
    return last
