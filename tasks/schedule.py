"""Celery beat schedule: maintenance sweeps (every minute by default), package expiry
hourly, the nightly retention sweep (`retention_cron`, in the configured timezone), the
daily checkpoint of the audit chain (`audit_checkpoint_cron`), the alerts check every
`alert_every_seconds`, and, when `suppression_cron` is set, the suppression list applied
again."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from compliance.config import Settings

PURGE_PACKAGES_EVERY_SECONDS = 3600.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    sweep_every = float(settings.sweep_every_seconds)
    entries = {
        "maintenance-sweep": {
            "task": "gdpr.maintenance.sweep",
            "schedule": sweep_every,
            "options": {"queue": "maintenance", "expires": sweep_every},
        },
        "retention-sweep": {
            "task": "gdpr.retention.sweep",
            "schedule": retention_schedule(settings),
            "options": {"queue": "retention", "expires": 3600.0},
        },
        "purge-expired-packages": {
            "task": "gdpr.maintenance.purge_packages",
            "schedule": PURGE_PACKAGES_EVERY_SECONDS,
            "options": {"queue": "maintenance", "expires": PURGE_PACKAGES_EVERY_SECONDS},
        },
        "audit-checkpoint": {
            "task": "gdpr.maintenance.audit_checkpoint",
            "schedule": cron(settings.audit_checkpoint_cron),
            "options": {"queue": "maintenance", "expires": 3600.0},
        },
        "alerts-check": {
            "task": "gdpr.alerts.check",
            "schedule": float(settings.alert_every_seconds),
            "options": {"queue": "maintenance", "expires": float(settings.alert_every_seconds)},
        },
    }
    if settings.suppression_cron:
        # it scans every searching source's identity columns: the retention queue's work
        entries["suppression-reapply"] = {
            "task": "gdpr.suppression.reapply",
            "schedule": cron(settings.suppression_cron),
            "options": {"queue": "retention", "expires": 3600.0},
        }
    return entries


def describe(settings: Settings) -> list[str]:
    """The schedule in words, one line per entry (printed when beat starts)."""
    every = settings.sweep_every_seconds
    return [
        f"maintenance sweep every {every:g} s (leases, queue, holds, uploads)",
        f"expired packages purged every {PURGE_PACKAGES_EVERY_SECONDS:g} s",
        f"alerts checked every {settings.alert_every_seconds:g} s",
        f"retention sweep at '{settings.retention_cron}' ({settings.timezone})",
        f"audit chain checkpointed at '{settings.audit_checkpoint_cron}' ({settings.timezone})",
        f"suppression list reapplied at '{settings.suppression_cron}' ({settings.timezone})"
        if settings.suppression_cron
        else "suppression list not reapplied by beat (GDPR_SUPPRESSION_CRON unset)",
    ]


def retention_schedule(settings: Settings) -> crontab:
    return cron(settings.retention_cron)


def cron(expression: str) -> crontab:
    """A cron setting ("minute hour day-of-month month day-of-week") as a crontab;
    Celery reads it in the app's timezone (`settings.timezone`)."""
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )
