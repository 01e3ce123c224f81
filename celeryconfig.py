"""Celery settings, built from the project's `Settings` (which reads the environment).

No secrets live here: the broker URL comes from `GDPR_BROKER_URL` (default: the embedded
SQLite broker under the home folder). `build(settings)` returns the mapping that
`tasks.app` loads; call it, do not import values from this module.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from compliance.config import Settings

QUEUES = ("requests", "retention", "maintenance")
TASK_TIME_LIMIT = 3 * 3600  # hard limit of the longest task (a big erasure or export)
VISIBILITY_TIMEOUT = TASK_TIME_LIMIT + 3600  # must exceed the longest task, or Redis redelivers


def build(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    return {
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _transport_options(settings.broker),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 300,
        "task_default_queue": "requests",
        "task_queues": [Queue(name, Exchange(name), routing_key=name) for name in QUEUES],
        "task_routes": {
            "gdpr.request.*": {"queue": "requests", "routing_key": "requests"},
            "gdpr.retention.*": {"queue": "retention", "routing_key": "retention"},
            "gdpr.maintenance.*": {"queue": "maintenance", "routing_key": "maintenance"},
        },
        "timezone": settings.timezone,
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule_filename": str(settings.home / "celerybeat-schedule"),
    }


def _transport_options(broker: str) -> dict[str, Any]:
    if broker.startswith(("redis://", "rediss://")):
        return {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "retry_on_timeout": True,
            "health_check_interval": 30,
        }
    # kombu's SQLAlchemy transport hands its options to create_engine(); it redelivers
    # nothing by itself, so the maintenance sweep re-dispatches queued requests.
    return {}
