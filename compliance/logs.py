"""Structured logs: dotted event names with id-only fields, personal data scrubbed.

`log.info("dsr.export.uploaded", extra={"request_id": ...})` renders as
``2026-11-28T06:30:00Z INFO dsr.export.uploaded request_id=...`` (setting `log_format`
``text``), or with ``json`` as one object a line:
``{"time": "2026-11-28T06:30:00.120Z", "level": "INFO", "event": "dsr.export.uploaded",
"logger": "gdpr.export", "request_id": "..."}``. While a task runs a request
(`bound_request`), its id is on every JSON line logged meanwhile.

Anything that looks like an email address or phone number is redacted before any handler
sees a record, whatever a library put in its message: a log record factory scrubs every
record's message, arguments, exception and stack text as it is made (so Celery's own
handlers get scrubbed records too), and a filter on our handler scrubs the extra fields.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

BOUND = "gdpr_bound"  # the record attribute holding the context bound when it was made
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    BOUND,
}
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, logger, the bound request id, the
    extra fields, and the exception (scrubbed). The whole line is scrubbed once more, for
    values that were not strings when the filter saw them."""

    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        line: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "event": record.getMessage(),
            "logger": record.name,
        }
        fields = dict(getattr(record, BOUND, None) or {})
        fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        for key, value in sorted(fields.items()):
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = record.stack_info
        return scrub(json.dumps(line, default=str, ensure_ascii=False))


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "text": EventFormatter,
    "json": JsonFormatter,
}

# --- the request a task is running ---------------------------------------------------

_request_id: ContextVar[str | None] = ContextVar("gdpr_request_id", default=None)


@contextmanager
def bound_request(request_id: object) -> Iterator[None]:
    """Within the block, every record made carries ``request_id`` (JSON lines show it)."""
    token = _request_id.set(str(request_id))
    try:
        yield
    finally:
        _request_id.reset(token)


# --- scrubbing every record as it is made -----------------------------------------------


def _scrubbed_records(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _scrub_record(record)
        request_id = _request_id.get()
        if request_id is not None:
            setattr(record, BOUND, {"request_id": request_id})
        return record

    factory._gdpr = True  # type: ignore[attr-defined]
    return factory


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        text = record.getMessage()
    except (TypeError, ValueError):  # arguments that do not fit the message
        text = f"{record.msg} (message arguments did not fit)"
    record.msg, record.args = scrub(text), None
    if record.exc_info and not record.exc_text:
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


def install_record_scrubbing() -> None:
    """Scrub every log record as it is made, whichever handler gets it (idempotent)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "_gdpr", False):
        logging.setLogRecordFactory(_scrubbed_records(current))


def _our_handler() -> logging.Handler | None:
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_gdpr", False):
            return handler
    return None


def use_format(name: str) -> None:
    """Render our handler's lines as `name` (``text`` or ``json``, setting `log_format`).
    With ``json``, Python's warnings become log records too (``py.warnings``), so that
    every line a log shipper reads from stderr parses."""
    handler = _our_handler()
    if handler is None:
        return
    if not isinstance(handler.formatter, FORMATTERS[name]):
        handler.setFormatter(FORMATTERS[name]())
    logging.captureWarnings(name == "json")


def configure_logging(verbosity: int = 0, log_format: str = "text") -> None:
    """Install one scrubbing, structured handler on the root logger (the `gdpr` and
    `celery` loggers reach it), and scrub every record as it is made."""
    install_record_scrubbing()
    level = logging.WARNING - 10 * min(verbosity, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[log_format]())
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_gdpr", False):
            root.removeHandler(existing)
    handler._gdpr = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if verbosity else level)
    logging.getLogger("gdpr").setLevel(level)
