"""A retention sweep counts the rows it deleted, per policy, in the process that ran it."""

from __future__ import annotations

from compliance import metrics
from compliance.retention import sweep
from tests.compliance.retention.conftest import Harness
from tests.sample_app import retention as app


def _purged(policy: str) -> float:
    for family in metrics.Exposed().collect():
        for sample in family.samples:
            if sample.name == "gdpr_retention_purged_rows_total" and sample.labels == {
                "policy": policy
            }:
                return float(sample.value)
    return 0.0


def test_the_rows_a_sweep_deletes_are_counted_under_its_policy(harness: Harness) -> None:
    before = _purged("app.sessions")
    sweep.run_inline(harness.ctx(), "app.sessions")
    sweep.run_inline(harness.ctx(), "app.sessions")  # nothing left: counts nothing
    assert _purged("app.sessions") - before == len(app.expired_sessions())
