from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner, Result

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher


@pytest.fixture
def run(db: Database, settings: Settings):  # type: ignore[no-untyped-def]
    dispatcher = RecordingDispatcher()

    def invoke(*args: str, operator: str = "alice") -> Result:
        app = App()
        app._cache.update(
            settings=settings.with_overrides(operator=operator), db=db, dispatcher=dispatcher
        )
        app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
        return CliRunner().invoke(cli, list(args), obj=app)

    invoke.dispatcher = dispatcher  # type: ignore[attr-defined]
    return invoke


def submit(run, *args: str) -> dict:  # type: ignore[no-untyped-def]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_submit_export_prints_id_and_queued_status(run) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "export", "--email", "ada@example.com", "--ticket", "T-9")
    assert result.exit_code == 0, result.output
    assert "export request" in result.output and "queued" in result.output
    assert len(run.dispatcher.dispatched) == 1


def test_erasure_flow_with_four_eyes(run) -> None:  # type: ignore[no-untyped-def]
    created = submit(run, "request", "erase", "--email", "ada@example.com", "--user-id", "1")
    assert created["status"] == "awaiting_approval"
    refused = run("request", "approve", created["id"], operator="alice")
    assert refused.exit_code == 4
    assert "four-eyes" in refused.output
    approved = run("request", "approve", created["id"], "--json", operator="bob")
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout)["status"] == "queued"


def test_malformed_email_is_one_line_exit_2_and_nothing_stored(run) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "erase", "--email", "not-an-email")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("error: email is malformed")
    listed = run("request", "list", "--json")
    assert json.loads(listed.stdout) == []


def test_unknown_identity_type_is_refused(run) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "export", "--identity", "passport=X1")
    assert result.exit_code == 2
    assert "unknown identity type" in result.output


def test_request_without_identity_is_refused(run) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "export")
    assert result.exit_code == 2
    assert "at least one identity" in result.output


def test_unknown_and_malformed_request_ids(run) -> None:  # type: ignore[no-untyped-def]
    missing = run("request", "show", str(uuid.uuid4()))
    assert missing.exit_code == 3
    assert "no request with id" in missing.output
    malformed = run("request", "cancel", "12; drop table")
    assert malformed.exit_code == 2
    assert "request id is malformed" in malformed.output


def test_wrong_state_exits_4_and_names_the_state(run) -> None:  # type: ignore[no-untyped-def]
    created = submit(run, "request", "export", "--email", "ada@example.com")
    result = run("request", "retry", created["id"])
    assert result.exit_code == 4
    assert "it is queued" in result.output


def test_list_show_and_overdue_filters(run) -> None:  # type: ignore[no-untyped-def]
    created = submit(run, "request", "export", "--email", "ada@example.com", "--ticket", "T-1")
    table = run("request", "list")
    assert created["id"] in table.output and "T-1" in table.output
    shown = run("request", "show", created["id"])
    assert "identities" in shown.output and "email" in shown.output
    assert "ada@example.com" not in shown.output
    assert json.loads(run("request", "list", "--overdue", "--json").stdout) == []
    assert run("request", "list", "--status", "bogus").exit_code == 2


def test_empty_list_says_so_and_exits_0(run) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "list")
    assert (result.exit_code, result.output.strip()) == (0, "No requests match.")


def test_extend_and_cancel(run) -> None:  # type: ignore[no-untyped-def]
    created = submit(run, "request", "erase", "--email", "ada@example.com")
    extended = run("request", "extend", created["id"], "--months", "2", "--reason", "complex")
    assert extended.exit_code == 0 and "now due" in extended.output
    too_much = run("request", "extend", created["id"], "--reason", "more")
    assert too_much.exit_code == 2
    cancelled = run("request", "cancel", created["id"], "--reason", "withdrawn")
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output


def test_audit_verify_reports_an_intact_chain(run) -> None:  # type: ignore[no-untyped-def]
    submit(run, "request", "export", "--email", "ada@example.com")
    result = run("audit", "verify")
    assert result.exit_code == 0
    assert "audit chain intact: 2 events" in result.output
