"""Sweeps as real processes: `gdpr retention run` killed with SIGKILL mid-run resumes
from its cursor at the same cutoff; two sweeps of one policy at once never both run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, Table, create_engine, insert, select

from compliance.models import RetentionPart, RetentionRun
from compliance.retention.sweep import SAVE_EVERY_BATCHES
from tests.compliance.retention.conftest import Harness

ROWS = 100_000
BIG = """
[sources.app.tables.events]
retention = { column = "at", days = 30 }
"""


def _fill(url: str) -> set[int]:
    """`events`: ROWS rows, every odd one 90 days old; returns the keys that must stay."""
    meta = MetaData()
    events = Table(
        "events",
        meta,
        Column("id", Integer, primary_key=True),
        Column("at", DateTime(timezone=True), nullable=False),
    )
    engine = create_engine(url)
    meta.create_all(engine)
    now = datetime.now(UTC)  # the processes run on the real clock
    with engine.begin() as conn:
        conn.execute(
            insert(events),
            [{"id": i, "at": now - timedelta(days=90 if i % 2 else 1)} for i in range(1, ROWS + 1)],
        )
    engine.dispose()
    return {i for i in range(1, ROWS + 1) if i % 2 == 0}


def _env(h: Harness, **extra: str) -> dict[str, str]:
    s = h.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
    env |= {"GDPR_HOME": str(s.home), "GDPR_SOURCES": str(h.manifest), "GDPR_OPERATOR": "ops"}
    if s.database_url:
        env |= {
            "GDPR_DATABASE_URL": s.database_url,
            "GDPR_KEYS": s.keys,
            "GDPR_PSEUDONYM_KEY": s.pseudonym_key,
        }
    return env | extra


def _gdpr(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("gdpr")
    return subprocess.Popen(
        [str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _progress(h: Harness) -> int:
    with h.db.session() as session:
        parts = session.scalars(select(RetentionPart)).all()
        return sum(int((p.counts or {}).get("deleted", 0)) for p in parts)


@pytest.fixture
def big(harness: Harness) -> set[int]:
    keep = _fill(harness.url)
    harness.reload(BIG)
    return keep


def test_a_sweep_killed_mid_run_resumes_from_its_cursor_at_the_same_cutoff(
    harness: Harness, big: set[int]
) -> None:
    env = _env(harness, GDPR_RETENTION_BATCH_SIZE="200", GDPR_RETENTION_PAUSE_MS="60")
    first = _gdpr(env, "retention", "run", "--policy", "app.events", "--json")
    deadline = time.monotonic() + 60
    while _progress(harness) == 0 and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    done_before = _progress(harness)
    assert 0 < done_before < ROWS // 2
    with harness.db.session() as session:
        [killed] = session.scalars(select(RetentionRun)).all()
    assert killed.status == "running"

    second = _gdpr(_env(harness), "retention", "run", "--policy", "app.events", "--json")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert harness.keys("events") == big
    with harness.db.session() as session:
        [run] = session.scalars(select(RetentionRun)).all()  # resumed, not a new run
        [part] = session.scalars(select(RetentionPart)).all()
    assert run.id == killed.id and run.cutoff == killed.cutoff
    assert run.status == "completed"
    # nothing is counted twice; a killed process's batches after its last checkpoint
    # are gone but uncounted (at most SAVE_EVERY_BATCHES of them)
    most = 200 * 4 * SAVE_EVERY_BATCHES  # batches grow to 4 times the configured size
    assert ROWS // 2 - most <= run.counts["deleted"] <= ROWS // 2
    assert part.attempts >= 2


def test_two_sweeps_of_one_policy_at_once_do_not_both_run(harness: Harness, big: set[int]) -> None:
    env = _env(harness, GDPR_RETENTION_BATCH_SIZE="200", GDPR_RETENTION_PAUSE_MS="60")
    first = _gdpr(env, "retention", "run", "--policy", "app.events")
    deadline = time.monotonic() + 60
    while _progress(harness) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    second = _gdpr(env, "retention", "run", "--policy", "app.events")
    _, err = second.communicate(timeout=60)
    assert second.returncode == 6
    assert "being swept by another run" in err
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert harness.keys("events") == big
    with harness.db.session() as session:
        assert len(session.scalars(select(RetentionRun)).all()) == 1
