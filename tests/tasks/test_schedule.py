"""Beat's schedule: what it fires, when, on which queue; the suppression list only when
`suppression_cron` says so."""

from __future__ import annotations

import pytest
from celery.schedules import crontab

from compliance.config import Settings, load_settings
from compliance.errors import ConfigError
from tasks import maintenance  # noqa: F401  (registers the tasks the schedule names)
from tasks.app import app
from tasks.schedule import beat_schedule, describe


def test_without_a_suppression_cron_beat_does_not_reapply_and_says_so() -> None:
    settings = Settings()
    assert "suppression-reapply" not in beat_schedule(settings)
    assert describe(settings)[-1] == (
        "suppression list not reapplied by beat (GDPR_SUPPRESSION_CRON unset)"
    )


def test_a_suppression_cron_schedules_the_reapply_on_the_retention_queue() -> None:
    settings = Settings(suppression_cron="30 3 * * 0", timezone="Europe/Berlin")
    entry = beat_schedule(settings)["suppression-reapply"]
    assert entry["schedule"] == crontab(minute="30", hour="3", day_of_week="0")
    assert entry["options"]["queue"] == "retention"
    assert entry["task"] in app.tasks
    assert describe(settings)[-1] == ("suppression list reapplied at '30 3 * * 0' (Europe/Berlin)")


def test_a_malformed_suppression_cron_is_refused_at_startup() -> None:
    with pytest.raises(ConfigError, match=r"^setting 'suppression_cron' must be five crontab"):
        load_settings({"GDPR_SUPPRESSION_CRON": "nightly"})


def test_beat_checkpoints_the_audit_chain_daily_on_the_maintenance_queue() -> None:
    settings = Settings(audit_checkpoint_cron="15 0 * * *")
    entry = beat_schedule(settings)["audit-checkpoint"]
    assert entry["schedule"] == crontab(minute="15", hour="0")
    assert entry["options"]["queue"] == "maintenance"
    assert entry["task"] in app.tasks
    assert beat_schedule(Settings())["audit-checkpoint"]["schedule"] == crontab(
        minute="0", hour="0"
    )
    assert "audit chain checkpointed at '15 0 * * *' (UTC)" in describe(settings)


def test_a_malformed_audit_checkpoint_cron_is_refused_at_startup() -> None:
    with pytest.raises(ConfigError, match=r"^setting 'audit_checkpoint_cron' must be five"):
        load_settings({"GDPR_AUDIT_CHECKPOINT_CRON": "daily"})


def test_beat_checks_the_alerts_every_alert_every_seconds_on_the_maintenance_queue() -> None:
    settings = Settings(alert_every_seconds=120)
    entry = beat_schedule(settings)["alerts-check"]
    assert (entry["schedule"], entry["options"]["queue"]) == (120.0, "maintenance")
    assert entry["task"] in app.tasks
    assert "alerts checked every 120 s" in describe(settings)
