"""`gdpr retention` and `gdpr hold`: what operators type, what they see, exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.models import AuditEvent, LegalHold
from tests.compliance.retention.conftest import Harness
from tests.sample_app import retention as app


@pytest.fixture
def gdpr(harness: Harness):  # type: ignore[no-untyped-def]
    def invoke(*args: str, operator: str = "dora") -> Result:
        cli_app = App()
        cli_app._cache.update(
            settings=harness.settings.with_overrides(operator=operator),
            db=harness.db,
            dispatcher=harness.dispatcher,
            registry=harness.registry,
            registry_live=True,
        )
        cli_app.now = lambda: harness.now  # type: ignore[method-assign]
        cli_app.close = lambda: None  # type: ignore[method-assign]
        return CliRunner().invoke(cli, list(args), obj=cli_app)

    return invoke


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_run_history_and_report(gdpr, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    planned = {p["policy"]: p for p in _json(gdpr("retention", "plan", "--json"))}
    assert set(planned) == {"app.users", "app.sessions", "app.activity"}
    assert planned["app.sessions"]["due"] == len(app.expired_sessions())

    before = gdpr("retention", "report")
    assert before.exit_code == 1
    assert "overdue beyond the grace window: app.users, app.sessions, app.activity" in before.output

    ran = gdpr("retention", "run", "--policy", "app.sessions")
    assert ran.exit_code == 0, ran.output
    assert "completed" in ran.output
    [past] = _json(gdpr("retention", "history", "--json"))
    assert (past["policy"], past["deleted"], past["trigger"]) == ("app.sessions", 18, "cli")

    report = {r["policy"]: r for r in json.loads(gdpr("retention", "report", "--json").stdout)}
    assert report["app.sessions"]["overdue"] == 0 and not report["app.sessions"]["late"]
    assert report["app.activity"]["late"]
    assert report["app.activity"]["overdue_since"].startswith("2026-05-31")


def test_a_dry_run_is_recorded_and_changes_nothing(gdpr, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    [recorded] = _json(gdpr("retention", "run", "--policy", "app.sessions", "--dry-run", "--json"))
    assert recorded["status"] == "dry run" and recorded["deleted"] == 18
    assert len(harness.keys("sessions")) == app.USERS * 5
    with harness.db.session() as session:
        actions = session.scalars(select(AuditEvent.action)).all()
    assert "retention.dry_run" in actions


def test_an_unknown_policy_is_one_line_naming_the_known_ones(gdpr) -> None:  # type: ignore[no-untyped-def]
    result = gdpr("retention", "run", "--policy", "app.nope")
    assert result.exit_code == 3
    assert "no retention policy 'app.nope'; policies: app.users, app.sessions" in result.output


def test_hold_add_list_release_are_audited_and_keep_no_identity(gdpr, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    added = _json(
        gdpr(
            "hold",
            "add",
            "--email",
            app.email(2),
            "--reason",
            "case 2026-17",
            "--basis",
            "Art. 17(3)(e) GDPR",
            "--until",
            "2027-01-31",
            "--json",
        )
    )
    assert added["subject"].startswith("ps_") and added["until"].startswith("2027-01-31")
    [listed] = _json(gdpr("hold", "list", "--json"))
    assert listed["id"] == added["id"]
    plan = {p["policy"]: p for p in _json(gdpr("retention", "plan", "--json"))}
    assert plan["app.sessions"]["held"] == len(app.expired_sessions(2))

    released = gdpr("hold", "release", str(added["id"]), "--reason", "settled")
    assert released.exit_code == 0, released.output
    assert _json(gdpr("hold", "list", "--json")) == []
    assert len(_json(gdpr("hold", "list", "--all", "--json"))) == 1
    with harness.db.session() as session:
        hold = session.scalars(select(LegalHold)).one()
        events = session.scalars(select(AuditEvent)).all()
    stored = json.dumps([hold.identity_hmacs, hold.subject, hold.reason])
    assert app.email(2) not in stored and "user2" not in stored
    assert [e.action for e in events if e.action.startswith("hold.")] == [
        "hold.add",
        "hold.release",
    ]
    assert all(app.email(2) not in json.dumps(e.details) for e in events)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["hold", "add", "--reason", "r", "--basis", "b"], 2, "a hold needs a subject"),
        (
            ["hold", "add", "--table", "sessions", "--reason", "r", "--basis", "b"],
            2,
            "--table goes with --source",
        ),
        (
            ["hold", "add", "--source", "shop", "--reason", "r", "--basis", "b"],
            2,
            "no source named 'shop'; sources: app",
        ),
        (
            ["hold", "add", "--source", "app", "--reason", "r", "--basis", "b", "--until", "31/01"],
            2,
            "--until must be a date like",
        ),
        (
            [
                "hold",
                "add",
                "--source",
                "app",
                "--reason",
                "r",
                "--basis",
                "b",
                "--until",
                "2020-01-01",
            ],
            2,
            "--until must be a date in the future",
        ),
        (["hold", "add", "--email", "not-an-email", "--reason", "r", "--basis", "b"], 2, "email"),
        (
            ["hold", "add", "--source", "app", "--reason", " ", "--basis", "b"],
            2,
            "a hold needs --reason",
        ),
        (["hold", "release", "99", "--reason", "x"], 3, "no legal hold with id 99"),
    ],
)
def test_bad_hold_input_is_one_line_and_writes_nothing(  # type: ignore[no-untyped-def]
    gdpr, harness: Harness, args: list[str], code: int, message: str
) -> None:
    result = gdpr(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    with harness.db.session() as session:
        assert session.scalars(select(LegalHold)).all() == []
