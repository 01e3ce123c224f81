"""Every command of `gdpr`, walked from the click group, refuses bad input in one line.

Each case runs a command with bad input against a real control database that holds a few
requests, and checks that nothing reaches stdout, exactly one `error: ...` line reaches
stderr, the exit code is the one the README's table gives that meaning, and no row of any
table of the control database was added, changed in number or removed, nor anything
dispatched. Generic cases are derived from each command's parameters (an unknown option,
a value out of range, a malformed or unknown request id, a malformed email), so a new
command is walked without being listed here; `SPECIFIC` adds what depends on state.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.models import AuditEvent, Base
from tests.compliance.helpers import write_small_manifest
from tests.conftest import make_test_keys

README = Path(__file__).resolve().parents[3] / "README.md"
UNKNOWN_ID = "7a1c1f0e-0000-4000-8000-000000000001"


def readme_exit_codes() -> dict[int, str]:
    """The README's table of exit codes: code -> meaning."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("Exit codes.") :]
    rows = re.findall(r"^\| (\d) \| ([^|]+?) \|", table, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


MEANING = {2: "bad input", 3: "not found", 4: "not allowed in the current state"}


@dataclass(frozen=True)
class Case:
    path: tuple[str, ...]  # the command, e.g. ("request", "extend")
    args: tuple[str, ...]  # after the command; {name} is a seeded request id or file
    code: int
    says: str = ""  # a piece of the error line

    @property
    def id(self) -> str:
        return " ".join((*self.path, *self.args))


# --- walking the group ------------------------------------------------------------------


def commands(
    group: click.Group = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under `group`, with its path."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def _valid(param: click.Parameter) -> list[str]:
    """A value for a required parameter that is fine on its own."""
    if param.name == "request_id":
        return [UNKNOWN_ID]
    if isinstance(param.type, click.Path):
        return ["{file}"]
    if isinstance(param.type, click.types.IntParamType):
        return ["1"]
    return ["x"]


def _filled(command: click.Command, skip: click.Parameter | None = None) -> list[str]:
    args: list[str] = []
    for param in command.params:
        if param is skip or not param.required:
            continue
        if isinstance(param, click.Option):
            args += [param.opts[0], *_valid(param)]
        else:
            args += _valid(param)
    return args


def _bad_value(param: click.Parameter) -> str | None:
    kind = param.type
    if isinstance(kind, click.IntRange | click.FloatRange):
        if kind.min is not None:
            return str(kind.min - 1)
        return None if kind.max is None else str(kind.max + 1)
    if isinstance(kind, click.Choice):
        return "bogus-choice"
    if isinstance(kind, click.Path) and kind.exists:
        return "/nonexistent/gdpr-file"
    if isinstance(kind, click.types.IntParamType | click.types.FloatParamType):
        return "not-a-number"
    return None


def _put(command: click.Command, param: click.Parameter, value: str) -> tuple[str, ...]:
    rest = _filled(command, skip=param)
    if isinstance(param, click.Option):
        return (*rest, param.opts[0], value)
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    before = sum(1 for p in arguments[: arguments.index(param)] if p.required)
    options = rest[before:]
    return (*rest[:before], value, *options)


def generic_cases(path: tuple[str, ...], command: click.Command) -> Iterator[Case]:
    if not command.context_settings.get("ignore_unknown_options"):
        yield Case(path, ("--no-such-option",), 2, "No such option")
    if isinstance(command, click.Group):
        yield Case(path, ("no-such-command",), 2, "No such command")
        return
    for param in command.params:
        bad = _bad_value(param)
        if bad is not None and not getattr(param, "is_flag", False):
            yield Case(path, _put(command, param, bad), 2, "Invalid value")
        if param.name == "request_id":
            yield Case(path, _put(command, param, "12; drop table"), 2, "request id is malformed")
            yield Case(path, tuple(_filled(command)), 3, UNKNOWN_ID)
        if param.name == "email":
            yield Case(path, (*_filled(command), "--email", "not-an-email"), 2, "email is")


SPECIFIC = [
    Case(
        ("request", "export"),
        ("--email", "ada@example.com", "--ticket", "ada@example.com called"),
        2,
        "ticket looks like it holds an email address",
    ),
    Case(
        ("request", "export"),
        ("--email", "ada@example.com", "--note", "rang +49 151 1234 5678"),
        2,
        "note looks like it holds a phone number",
    ),
    Case(
        ("request", "erase"),
        ("--user-id", "4242", "--ticket", "user 4242"),
        2,
        "the subject's user_id",
    ),
    Case(
        ("request", "export"),
        ("--email", "a@example.com", "--email", "b@example.com"),
        2,
        "name it with --contact",
    ),
    Case(
        ("request", "export"),
        ("--email", "a@example.com", "--contact", "c@example.com"),
        2,
        "--contact must be one of",
    ),
    Case(
        ("request", "export"),
        ("--user-id", "7" * 10_000),
        2,
        "user_id is longer than 128 characters",
    ),
    Case(("request", "export"), ("--email", "ada@exa\u200bmple.com"), 2, "invisible"),
    Case(("request", "export"), ("ada@example.com",), 2, "(<redacted>)"),
    Case(("request", "export"), (), 2, "at least one identity"),
    Case(("request", "approve"), ("{awaiting}",), 4, "four-eyes"),
    Case(("request", "approve"), ("{export}",), 4, "it is completed"),
    Case(("request", "reject"), ("{export}", "--reason", "late"), 4, "it is completed"),
    Case(
        ("request", "reject"),
        ("{awaiting}", "--reason", "ada@example.com asked"),
        2,
        "reason looks like",
    ),
    Case(("request", "cancel"), ("{export}",), 4, "it is completed"),
    Case(("request", "cancel"), ("{erasure}", "--reason", "x"), 4, "it is completed"),
    Case(("request", "retry"), ("{awaiting}",), 4, "it is awaiting_approval"),
    Case(
        ("request", "extend"),
        ("{export}", "--reason", "complex"),
        4,
        "only an open request can be extended",
    ),
    Case(
        ("request", "extend"),
        ("{awaiting}", "--months", "3", "--reason", "complex"),
        2,
        "'--months': 3 is not in the range",
    ),
    Case(
        ("request", "extend"),
        ("{awaiting}", "--reason", "call 0151 12345678"),
        2,
        "reason looks like it holds a phone number",
    ),
    Case(("request", "show"), (UNKNOWN_ID, "--timeout", "-1"), 2, "Invalid value for '--timeout'"),
    Case(("request", "show"), ("{awaiting}", "--wait"), 4, "waiting cannot end until a second"),
    Case(
        ("request", "show"),
        ("{awaiting_export}", "--wait", "--timeout", "0"),
        6,
        "is still queued after 0 s; keep watching with",
    ),
    Case(
        ("request", "plan"), ("--email", "ada@example.com", "--action", "delete"), 2, "'--action'"
    ),
    Case(("link", "reissue"), ("{erasure}",), 2, "only an export has download links"),
    Case(("link", "reissue"), ("{awaiting_export}",), 4, "no export package yet"),
    Case(
        ("hold", "add"),
        ("--email", "ada@example.com", "--reason", "ada@example.com", "--basis", "x"),
        2,
        "--reason looks like it holds an email",
    ),
    Case(
        ("hold", "add"),
        ("--user-id", "4242", "--reason", "matter 4242", "--basis", "x"),
        2,
        "the subject's user_id",
    ),
    Case(
        ("hold", "add"),
        ("--source", "nosuch", "--reason", "M-1", "--basis", "x"),
        2,
        "no source named",
    ),
    Case(
        ("hold", "add"),
        ("--source", "app", "--reason", "M-1", "--basis", "x", "--until", "31.12.2030"),
        2,
        "--until must be a date",
    ),
    Case(("hold", "add"), ("--reason", "M-1", "--basis", "x"), 2, "a hold needs a subject"),
    Case(("hold", "release"), ("99999", "--reason", "ended"), 3, "no legal hold with id 99999"),
    Case(("export", "decrypt"), ("{file}", "-o", "{out}"), 7, ""),
    Case(("keys", "generate"), ("--key-id", "bad id"), 2, "key id must be"),
    Case(("worker",), ("--queues", "requests,bogus"), 2, "unknown queue 'bogus'"),
]


def all_cases() -> list[Case]:
    found = [Case((), ("--no-such-option",), 2, "No such option")]
    found += [Case((), ("no-such-command",), 2, "No such command")]
    for path, command in commands():
        found += list(generic_cases(path, command))
    return found + SPECIFIC


CASES = all_cases()


def test_every_command_and_group_is_walked() -> None:
    walked = {case.path for case in CASES}
    assert {path for path, _ in commands()} <= walked
    assert len(walked) > 30


# --- running a case ---------------------------------------------------------------------


@pytest.fixture
def gdpr(db: Database, settings: Settings, tmp_path: Path) -> Callable[..., Result]:
    """`gdpr ARGS` against `db` with a small manifest and a configured keyring."""
    manifest = write_small_manifest(tmp_path / "sources")
    configured = settings.with_overrides(
        operator="alice", sources=str(manifest), **make_test_keys()
    )
    dispatcher = RecordingDispatcher()

    def invoke(*args: str, operator: str = "alice") -> Result:
        app = App()
        app._cache.update(
            settings=configured.with_overrides(operator=operator), db=db, dispatcher=dispatcher
        )
        app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
        return CliRunner().invoke(cli, list(args), obj=app)

    invoke.dispatcher = dispatcher  # type: ignore[attr-defined]
    return invoke


@pytest.fixture
def seeded(
    gdpr: Callable[..., Result], make_export_request: Callable[..., uuid.UUID], tmp_path: Path
) -> dict[str, str]:
    """Requests in several states, and files, to name in the cases."""
    awaiting = _created(gdpr("request", "erase", "--email", "ada@example.com", "--json"))
    queued = _created(gdpr("request", "export", "--email", "bo@example.com", "--json"))
    garbage = tmp_path / "garbage.zip.enc"
    garbage.write_bytes(b"not an encrypted package" * 10)
    return {
        "awaiting": awaiting,
        "awaiting_export": queued,
        "export": str(make_export_request()),
        "erasure": str(make_export_request(kind="erasure", with_package=False)),
        "file": str(garbage),
        "out": str(tmp_path / "out.zip"),
    }


def _created(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return str(re.search(r'"id": "([0-9a-f-]{36})"', result.stdout).group(1))  # type: ignore[union-attr]


def row_counts(db: Database) -> dict[str, int]:
    with db.engine.connect() as conn:
        return {
            t.name: conn.scalar(select(func.count()).select_from(t)) or 0
            for t in Base.metadata.sorted_tables
        }


def last_action(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return conn.scalar(select(AuditEvent.action).order_by(AuditEvent.seq.desc()).limit(1))


def _fill(args: tuple[str, ...], seeded: dict[str, str]) -> list[str]:
    return [arg.format(**seeded) if "{" in arg else arg for arg in args]


@pytest.mark.parametrize("case", CASES, ids=[c.id[:80] for c in CASES])
def test_bad_input_is_one_line_on_stderr_with_the_readme_exit_code_and_changes_nothing(
    case: Case, gdpr: Any, seeded: dict[str, str], db: Database
) -> None:
    before = row_counts(db)
    dispatched = list(gdpr.dispatcher.dispatched)
    result = gdpr(*case.path, *_fill(case.args, seeded))
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert case.says in lines[0]
    assert result.exit_code == case.code, lines[0]
    table = readme_exit_codes()
    assert case.code in table
    if case.code in MEANING:
        assert table[case.code].startswith(MEANING[case.code])
    after = row_counts(db)
    refusals = after["audit_event"] - before["audit_event"]
    if refusals:  # a refused action is audited (and nothing else changes)
        assert refusals == 1 and last_action(db) == "operator.refused"
    assert {**after, "audit_event": before["audit_event"]} == before
    assert gdpr.dispatcher.dispatched == dispatched
    assert not Path(seeded["out"]).exists()


def test_the_readme_table_has_every_exit_code_the_cli_maps_to() -> None:
    from compliance.cli.main import EXIT_CODES

    table = readme_exit_codes()
    assert set(range(8)) == set(table)
    assert {code for _, code in EXIT_CODES} <= set(table)
