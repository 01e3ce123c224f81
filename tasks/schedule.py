"""Celery beat schedule: maintenance sweeps every minute, package expiry hourly."""

from __future__ import annotations

from typing import Any

from compliance.config import Settings

SWEEP_EVERY_SECONDS = 60.0
PURGE_PACKAGES_EVERY_SECONDS = 3600.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "maintenance-sweep": {
            "task": "gdpr.maintenance.sweep",
            "schedule": SWEEP_EVERY_SECONDS,
            "options": {"queue": "maintenance", "expires": SWEEP_EVERY_SECONDS},
        },
        "purge-expired-packages": {
            "task": "gdpr.maintenance.purge_packages",
            "schedule": PURGE_PACKAGES_EVERY_SECONDS,
            "options": {"queue": "maintenance", "expires": PURGE_PACKAGES_EVERY_SECONDS},
        },
    }
