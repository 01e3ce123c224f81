"""The Celery application. Configured once from `Settings` via `configure(settings)`;
when nothing configured it (e.g. `celery -A tasks.app`), from the environment."""

from __future__ import annotations

from typing import Any

from celery import Celery

import celeryconfig
from compliance.config import Settings, load_settings

app = Celery("gdpr", include=["tasks.requests", "tasks.retention", "tasks.maintenance"])
_state: dict[str, Settings] = {}


def configure(settings: Settings) -> Celery:
    """Point the app (and this process's task runtime) at these settings."""
    _state["settings"] = settings
    app.conf.update(celeryconfig.build(settings))
    from tasks import schedule

    app.conf.beat_schedule = schedule.beat_schedule(settings)
    return app


def settings() -> Settings:
    """The settings this process was configured with (loaded from the environment if none)."""
    if "settings" not in _state:
        _state["settings"] = load_settings()
    return _state["settings"]


@app.on_configure.connect
def _configure_from_environment(sender: Celery, **_: Any) -> None:
    if "settings" not in _state:
        sender.conf.update(celeryconfig.build(settings()))
