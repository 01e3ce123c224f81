"""`gdpr audit log`, `gdpr audit checkpoint` and `gdpr audit verify` with checkpoints, on
both control databases; the log finds a subject by the pseudonym of their email and never
shows the address; bad input is one line that changes nothing."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

from compliance import audit
from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.dispatch import RecordingDispatcher
from tests.compliance.helpers import write_small_manifest

ADA, BOB = "Ada.Lovelace@example.com", "bob@example.com"


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return (tmp_path / "objects").as_uri()
    return f"s3://{request.getfixturevalue('s3_bucket')}/gdpr"


@pytest.fixture
def run(as_operator, settings: Settings, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """`gdpr` with a small manifest, as alice, on the test's control database."""
    manifest = write_small_manifest(tmp_path / "sources")
    overrides: dict[str, str] = {"operator": "alice", "sources": str(manifest)}
    if "storage_url" in request.fixturenames:
        overrides["storage_url"] = request.getfixturevalue("storage_url")
        if overrides["storage_url"].startswith("s3://"):
            overrides["s3_endpoint_url"] = request.getfixturevalue("s3_endpoint")
    configured = settings.with_overrides(**overrides)

    def invoke(*args: str) -> Result:
        app = App()
        app._cache.update(
            settings=configured, db=as_operator("alice"), dispatcher=RecordingDispatcher()
        )
        app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
        return CliRunner().invoke(cli, list(args), obj=app)

    invoke.settings = configured  # type: ignore[attr-defined]
    return invoke


def _submit(run, email: str) -> str:  # type: ignore[no-untyped-def]
    result = run("request", "export", "--email", email, "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["id"])


def _log(run, *args: str) -> list[dict]:  # type: ignore[no-untyped-def]
    result = run("audit", "log", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_log_shows_every_event_oldest_first_one_line_each(run) -> None:  # type: ignore[no-untyped-def]
    first, second = _submit(run, ADA), _submit(run, BOB)
    result = run("audit", "log")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert [line.split()[5] for line in lines] == [first, first, second, second]
    seqs = [int(line.split()[2].lstrip("#")) for line in lines]
    assert seqs == sorted(seqs)
    assert "alice" in lines[0] and "request.submit" in lines[0]


def test_the_log_filters_by_request_action_time_and_limit(run) -> None:  # type: ignore[no-untyped-def]
    first, second = _submit(run, ADA), _submit(run, BOB)
    assert {e["request_id"] for e in _log(run, "--request", second)} == {second}
    submits = _log(run, "--action", "request.submit")
    assert [e["request_id"] for e in submits] == [first, second]
    assert len(_log(run, "--limit", "3")) == 3
    assert len(_log(run, "--since", "1h")) == 4
    assert _log(run, "--until", "2000-01-01") == []
    assert len(_log(run, "--since", "2000-01-01T00:00:00+02:00", "--until", "2999-01-01")) == 4
    at = submits[1]["at"]
    assert {e["request_id"] for e in _log(run, "--since", at)} == {second}
    nothing = run("audit", "log", "--action", "no.such.action")
    assert nothing.exit_code == 0 and nothing.stdout == "No audit events match.\n"


def test_the_log_finds_a_subject_by_email_pseudonym_and_never_shows_the_address(
    run,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    ada = _submit(run, ADA)
    _submit(run, BOB)
    caplog.set_level(logging.DEBUG)
    result = run("audit", "log", "--email", " ada.lovelace@EXAMPLE.com ")  # normalised alike
    assert result.exit_code == 0, result.output
    assert {line.split()[5] for line in result.stdout.splitlines()} == {ada}
    as_json = run("audit", "log", "--json", "--email", ADA)
    assert {e["request_id"] for e in json.loads(as_json.stdout)} == {ada}
    seen = result.output + as_json.output + caplog.text
    seen += "".join(json.dumps(vars(r), default=str) for r in caplog.records)
    assert "lovelace" not in seen.lower()
    nobody = run("audit", "log", "--email", "nobody@example.com")
    assert nobody.stdout == "No audit events match.\n"


def test_the_log_by_email_also_finds_events_that_name_the_pseudonym(
    run,  # type: ignore[no-untyped-def]
    db: Database,
) -> None:
    ada = _submit(run, ADA)
    with db.session() as session:
        subject = session.execute(
            text("SELECT subject FROM dsr_request WHERE subject IS NOT NULL")
        ).scalar_one()
        named = {"subjects": [subject]}
        audit.record(
            session, actor="sweep", action="suppression.found", now=utcnow(), details=named
        )
        audit.record(session, actor="sweep", action="other", now=utcnow(), details={"n": 1})
    events = _log(run, "--email", ADA)
    assert [e["action"] for e in events][-1] == "suppression.found"
    assert {e["request_id"] for e in events} == {ada, None}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--email", "not-an-email"), "error: email is malformed"),
        (("--since", "yesterday"), "error: --since is malformed"),
        (("--until", "2026-13-01"), "error: --until is malformed"),
        (("--request", "12; drop table"), "error: request id is malformed"),
        (("--since", "2026-12-02", "--until", "2026-12-01"), "error: --since must be before"),
        (("--limit", "0"), "error: Invalid value for '--limit'"),
    ],
)
def test_bad_input_to_the_log_is_one_line_exit_2_and_changes_nothing(
    run,  # type: ignore[no-untyped-def]
    args: tuple[str, ...],
    says: str,
) -> None:
    _submit(run, BOB)
    before = run("audit", "log", "--json").stdout
    result = run("audit", "log", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if "keyring.development" not in line]
    assert len(errors) == 1 and errors[0].startswith(says), result.stderr
    assert "not-an-email" not in result.stderr
    assert run("audit", "log", "--json").stdout == before


def test_checkpoint_writes_once_per_head_and_verify_agrees(
    run,  # type: ignore[no-untyped-def]
    storage_url: str,
) -> None:
    empty = run("audit", "checkpoint")
    assert empty.exit_code == 0 and empty.stdout == "Nothing to do: the audit chain is empty.\n"
    _submit(run, ADA)
    wrote = run("audit", "checkpoint", "--json")
    assert wrote.exit_code == 0, wrote.output
    summary = json.loads(wrote.stdout)
    assert summary["written"] and summary["checkpoint"]["events"] == 2
    again = run("audit", "checkpoint")
    assert again.exit_code == 0 and again.stdout.startswith("Nothing to do: audit-checkpoints/")
    verified = run("audit", "verify")
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.splitlines() == [
        "audit chain intact: 2 events",
        f"audit checkpoints agree: 1, the newest at event {summary['checkpoint']['seq']}",
    ]


def test_verify_names_the_first_missing_event_when_the_tail_is_cut(
    run,  # type: ignore[no-untyped-def]
    db: Database,
    storage_url: str,
) -> None:
    _submit(run, ADA)
    _submit(run, BOB)
    head = json.loads(run("audit", "checkpoint", "--json").stdout)["checkpoint"]["seq"]
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("DELETE FROM audit_event WHERE seq > :s"), {"s": head - 2})
    assert run("audit", "verify", "--no-checkpoints").exit_code == 0  # links alone: fine
    result = run("audit", "verify")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"audit chain BROKEN at event {head}: missing")
    assert f"the chain ends at event {head - 2}" in result.stderr
    report = json.loads(run("audit", "verify", "--json").stdout)
    assert (report["ok"], report["broken_at"]) == (False, head)
    assert report["checkpoints"]["problems"][0]["seq"] == head


def test_verify_reports_a_forged_checkpoint_as_tampered(run, storage_url: str) -> None:  # type: ignore[no-untyped-def]
    from exporters.storage import open_storage

    _submit(run, ADA)
    key = json.loads(run("audit", "checkpoint", "--json").stdout)["checkpoint"]["key"]
    storage = open_storage(run.settings)
    body = json.loads(b"".join(storage.download(key)))
    storage.upload(key, [json.dumps({**body, "events": 1}).encode()])
    result = run("audit", "verify")
    assert result.exit_code == 1
    assert f"audit checkpoint '{key}' is tampered: its signature does not verify" in result.stderr
