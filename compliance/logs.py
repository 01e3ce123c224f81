"""Structured logs: dotted event names with id-only fields, personal data scrubbed.

`log.info("dsr.export.uploaded", extra={"request_id": ...})` renders as
``2026-11-28T06:30:00Z INFO dsr.export.uploaded request_id=...``. A filter on the handler
redacts anything that looks like an email address or phone number, whatever a library
put in its message, before it reaches the output.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+\d[\d ()-]{6,}\d")
REDACTED = "<redacted>"


def scrub(text: str) -> str:
    return _PHONE.sub(REDACTED, _EMAIL.sub(REDACTED, text))


def stack_summary(exc: BaseException, depth: int = 8) -> str:
    """Where an exception (and its causes) came from: types, files, lines and functions,
    never messages or source lines, which may hold the values being processed."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 5:
        frames = traceback.extract_tb(current.__traceback__)[-depth:]
        where = " < ".join(
            f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)
        )
        parts.append(f"{type(current).__name__} at {where or '?'}")
        current = current.__cause__ or current.__context__
    return " | from ".join(parts)


class ScrubFilter(logging.Filter):
    """Redact emails and phone numbers from messages, arguments and extra fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, scrub(value))
        return True


class EventFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%SZ")
        extras = " ".join(
            f"{k}={v}" for k, v in sorted(record.__dict__.items()) if k not in _STANDARD
        )
        line = f"{stamp} {record.levelname} {record.getMessage()}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{scrub(self.formatException(record.exc_info))}"
        return line


def configure_logging(verbosity: int = 0) -> None:
    """Install one scrubbing, structured handler on the `gdpr` and `celery` loggers."""
    level = logging.WARNING - 10 * min(verbosity, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter())
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_gdpr", False):
            root.removeHandler(existing)
    handler._gdpr = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if verbosity else level)
    logging.getLogger("gdpr").setLevel(level)
