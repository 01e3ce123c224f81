"""Log output: text lines as they always were, JSON lines that parse and carry the running
request's id, and no email address in any handler's output, whoever logs it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from compliance import logs

EMAIL = "ada.lovelace@example.com"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """What our handler writes, configured as `gdpr` configures it (then removed)."""
    logs.configure_logging(1)
    [handler] = [h for h in logging.getLogger().handlers if getattr(h, "_gdpr", False)]
    stream = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    logs.use_format("text")
    logging.getLogger().removeHandler(handler)


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_text_lines_keep_their_shape(output: io.StringIO) -> None:
    with logs.bound_request("5a1e"):
        logging.getLogger("gdpr.worker").info("dsr.run.started", extra={"kind": "erasure"})
    [line] = output.getvalue().splitlines()
    stamp, level, rest = line.split(" ", 2)
    assert stamp.endswith("Z") and "T" in stamp
    assert (level, rest) == ("INFO", "dsr.run.started kind=erasure")  # nothing bound shown


def test_json_lines_parse_and_carry_the_bound_request_id(output: io.StringIO) -> None:
    logs.use_format("json")
    log = logging.getLogger("gdpr.export")
    with logs.bound_request("0b4c3d2e-0000-4000-8000-000000000001"):
        log.info("dsr.export.uploaded", extra={"parts": 3})
        logging.getLogger("botocore.retry").warning("retrying upload part %d", 2)
    log.info("dsr.export.idle")
    first, library, after = _json_lines(output)
    assert first["event"] == "dsr.export.uploaded"
    assert first["level"] == "INFO"
    assert first["logger"] == "gdpr.export"
    assert first["parts"] == 3
    assert str(first["time"]).endswith("Z")
    assert first["request_id"] == "0b4c3d2e-0000-4000-8000-000000000001"
    assert library["request_id"] == first["request_id"]  # a library's line too
    assert library["event"] == "retrying upload part 2"
    assert "request_id" not in after  # the block has ended


def test_an_explicit_request_id_wins_over_the_bound_one(output: io.StringIO) -> None:
    logs.use_format("json")
    with logs.bound_request("outer"):
        logging.getLogger("gdpr.worker").info("dsr.run.continued", extra={"request_id": "inner"})
    [line] = _json_lines(output)
    assert line["request_id"] == "inner"


def test_no_email_reaches_a_json_line_whatever_carries_it(output: io.StringIO) -> None:
    logs.use_format("json")
    lib = logging.getLogger("smtplib.client")
    lib.warning("refused recipient %s", EMAIL)
    lib.warning("batch", extra={"recipients": [EMAIL], "to": EMAIL})
    try:
        raise ValueError(f"bad address {EMAIL}")
    except ValueError:
        lib.exception("send failed")
    text = output.getvalue()
    assert EMAIL not in text
    lines = _json_lines(output)
    assert lines[0]["event"] == "refused recipient <redacted>"
    assert lines[1]["recipients"] == ["<redacted>"]
    assert "bad address <redacted>" in str(lines[2]["exception"])


def test_a_handler_that_is_not_ours_gets_scrubbed_records_too(output: io.StringIO) -> None:
    foreign = io.StringIO()
    handler = logging.StreamHandler(foreign)  # as Celery installs its own on celery.task
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    task_logger = logging.getLogger("celery.task.sample")
    task_logger.addHandler(handler)
    try:
        task_logger.error("mail to %s bounced", EMAIL)
        try:
            raise RuntimeError(EMAIL)
        except RuntimeError:
            task_logger.exception("crashed for %s", "+44 20 7946 0958")
    finally:
        task_logger.removeHandler(handler)
    assert EMAIL not in foreign.getvalue()
    assert "7946" not in foreign.getvalue()
    assert "mail to <redacted> bounced" in foreign.getvalue()
    assert "RuntimeError: <redacted>" in foreign.getvalue()


def test_arguments_that_do_not_fit_the_message_still_make_a_line(output: io.StringIO) -> None:
    logging.getLogger("somelib").warning("two %s %s", "only-one")
    assert "two %s %s (message arguments did not fit)" in output.getvalue()


def test_json_mode_turns_python_warnings_into_json_lines(output: io.StringIO) -> None:
    import warnings

    logs.use_format("json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit(f"deprecated option for {EMAIL}", UserWarning, "lib.py", 7)
    [line] = _json_lines(output)
    assert line["logger"] == "py.warnings"
    assert "deprecated option for <redacted>" in str(line["event"])
