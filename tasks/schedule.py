"""Celery beat schedule: maintenance sweeps (every minute by default), package expiry hourly."""

from __future__ import annotations

from typing import Any

from compliance.config import Settings

PURGE_PACKAGES_EVERY_SECONDS = 3600.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    sweep_every = float(settings.sweep_every_seconds)
    return {
        "maintenance-sweep": {
            "task": "gdpr.maintenance.sweep",
            "schedule": sweep_every,
            "options": {"queue": "maintenance", "expires": sweep_every},
        },
        "purge-expired-packages": {
            "task": "gdpr.maintenance.purge_packages",
            "schedule": PURGE_PACKAGES_EVERY_SECONDS,
            "options": {"queue": "maintenance", "expires": PURGE_PACKAGES_EVERY_SECONDS},
        },
    }
