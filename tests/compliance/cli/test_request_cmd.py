from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from tests.compliance.helpers import SMALL_MANIFEST, write_small_manifest


@pytest.fixture
def run(as_operator, settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """`gdpr` with a small manifest whose source answers email and user_id."""
    dispatcher = RecordingDispatcher()
    manifest = write_small_manifest(tmp_path / "sources")

    def invoke(*args: str, operator: str = "alice", sources: Path | None = manifest) -> Result:
        app = App()
        overrides = {"operator": operator, "sources": str(sources or "")}
        app._cache.update(
            settings=settings.with_overrides(**overrides),
            db=as_operator(operator),
            dispatcher=dispatcher,
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
    extended = run("request", "extend", created["id"], "--reason", "complex")
    assert extended.exit_code == 0 and "now due" in extended.output
    too_many = run("request", "extend", created["id"], "--months", "2", "--reason", "more")
    assert too_many.exit_code == 2
    assert error_line(too_many) == (
        f"error: request {created['id']} can be extended by at most 1 month more (it is"
        " already extended by 1; Art. 12(3) allows 2 months in all); pass --months 1"
    )
    assert run("request", "extend", created["id"], "--reason", "more").exit_code == 0
    at_most = run("request", "extend", created["id"], "--reason", "again")
    assert at_most.exit_code == 4
    assert "already extended by the most allowed, 2 months" in error_line(at_most)
    cancelled = run("request", "cancel", created["id"], "--reason", "withdrawn")
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output


def test_audit_verify_reports_an_intact_chain(run) -> None:  # type: ignore[no-untyped-def]
    submit(run, "request", "export", "--email", "ada@example.com")
    result = run("audit", "verify")
    assert result.exit_code == 0
    assert "audit chain intact: 2 events" in result.output


def manifest_answering_user_id(folder: Path) -> Path:
    path = write_small_manifest(folder)
    path.write_text(SMALL_MANIFEST.replace('email = "email", ', ""), encoding="utf-8")
    return path


def error_line(result: Result) -> str:
    """The one line the command printed on stderr (besides the embedded keyring warning)."""
    lines = [line for line in result.stderr.splitlines() if "keyring.development" not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_nothing_written(run) -> None:  # type: ignore[no-untyped-def]
    assert json.loads(run("request", "list", "--json").stdout) == []
    assert "audit chain intact: 0 events" in run("audit", "verify").output
    assert run.dispatcher.dispatched == []


def test_submitting_an_erasure_with_no_source_for_email_exits_5_and_writes_nothing(
    run, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    manifest = manifest_answering_user_id(tmp_path / "other")
    result = run("request", "erase", "--email", "ada@example.com", sources=manifest)
    assert result.exit_code == 5
    assert error_line(result).startswith(
        "error: no registered source can look up a subject by email (they answer user_id); "
        "register a source with an email identity column"
    )
    assert "ada@example.com" not in result.output
    assert_nothing_written(run)


def test_submitting_an_export_with_no_source_registered_exits_5_and_writes_nothing(
    run,
) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "export", "--email", "ada@example.com", "--json", sources=None)
    assert result.exit_code == 5
    assert result.stdout == ""
    assert error_line(result).startswith("error: no data source is registered")
    assert_nothing_written(run)


def test_submitting_needs_only_the_manifest_not_a_live_source(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    manifest = write_small_manifest(tmp_path / "offline")
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/app?connect_timeout=1"
    manifest.write_text(SMALL_MANIFEST.replace("sqlite:///app.db", unreachable))
    created = run("request", "export", "--email", "ada@example.com", "--json", sources=manifest)
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["status"] == "queued"


def test_a_manifest_with_several_mistakes_is_one_line_listing_each_and_exits_5(
    run, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    manifest = tmp_path / "broken.toml"
    manifest.write_text('[sources.a]\nkind = "mongo"\n[sources.b]\nurl = "x"\n')
    result = run("request", "erase", "--email", "ada@example.com", sources=manifest)
    assert result.exit_code == 5
    line = error_line(result)
    assert line.startswith("error: 2 problems in the sources manifest: sources.a: ")
    assert line.endswith(" | sources.b: missing required key 'kind'")
    assert_nothing_written(run)


def audit_details(db: Database, request_id: str) -> dict[str, dict]:  # type: ignore[type-arg]
    from sqlalchemy import select

    from compliance.models import AuditEvent

    with db.session() as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.request_id == uuid.UUID(request_id))
            .order_by(AuditEvent.seq)
        ).all()
        return {e.action: dict(e.details or {}) for e in events}


def test_note_and_every_reason_are_shown_in_show_json_and_the_audit_trail(
    run, db: Database
) -> None:  # type: ignore[no-untyped-def]
    created = submit(
        run, "request", "erase", "--email", "ada@example.com", "--note", "verified via login"
    )
    rid = created["id"]
    assert run("request", "extend", rid, "--reason", "many systems").exit_code == 0
    cancelled = run("request", "cancel", rid, "--reason", "subject withdrew")
    assert cancelled.stdout == f"request {rid} cancelled\n"
    text = run("request", "show", rid).stdout
    assert "verified via login\n" in text and "cancelled: subject withdrew\n" in text
    assert "extended      by 1 month(s): many systems\n" in text
    view = json.loads(run("request", "show", rid, "--json").stdout)
    assert view["note"] == "verified via login\ncancelled: subject withdrew"
    assert (view["extension_reason"], view["extended_months"]) == ("many systems", 1)
    trail = audit_details(db, rid)
    assert trail["request.submit"]["note"] == "verified via login"
    assert trail["request.extend"]["reason"] == "many systems"
    assert trail["request.cancel"]["reason"] == "subject withdrew"
    assert "ada@example.com" not in json.dumps(trail)

    other = submit(run, "request", "erase", "--email", "ada@example.com")["id"]
    rejected = run("request", "reject", other, "--reason", "not verified", operator="bob")
    assert rejected.stdout == f"request {other} rejected\n"
    assert "rejected: not verified" in run("request", "show", other).stdout
    assert audit_details(db, other)["request.reject"]["reason"] == "not verified"
    assert "note" not in audit_details(db, other)["request.submit"]
