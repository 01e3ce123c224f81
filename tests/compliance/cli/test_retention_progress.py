"""`gdpr retention run` while it sweeps: plain progress lines when stdout is not a
terminal, nothing but the JSON with --json, and no bar for a policy with nothing due."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from compliance.cli import output
from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from tests.conftest import make_test_keys
from tests.sample_app.fixtures import sample_databases

HEADER = "[sources.shop.tables.sessions]\n"
POLICY = 'retention = { column = "created_at", days = 30 }\n'  # all 3 sample sessions are older


@pytest.fixture
def gdpr(sqlite_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Result]]:
    with sample_databases("sqlite", tmp_path) as dbs:
        manifest = tmp_path / "sources.toml"
        manifest.write_text(dbs.manifest().replace(HEADER, HEADER + POLICY), encoding="utf-8")
        settings = sqlite_settings.with_overrides(sources=str(manifest), **make_test_keys())
        db = Database.connect(settings)
        db.upgrade()

        def invoke(*args: str) -> Result:
            app = App()
            app._cache.update(settings=settings, db=db, dispatcher=RecordingDispatcher())
            app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
            return CliRunner().invoke(cli, list(args), obj=app)

        yield invoke
        db.dispose()


def test_off_a_terminal_a_run_prints_plain_progress_lines_then_its_table(
    gdpr: Callable[..., Result],
) -> None:
    ran = gdpr("retention", "run")
    assert ran.exit_code == 0, ran.output
    lines = ran.stdout.splitlines()
    assert re.fullmatch(r"\[ +\d+ s\] shop\.sessions: 3 item\(s\) due", lines[0]), lines
    assert "\r" not in ran.stdout and "\x1b" not in ran.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("RUN  POLICY"))
    assert all(line.startswith("[") for line in lines[:header])  # progress, then the table
    assert re.search(r"^1 +shop\.sessions +completed .* 3 ", ran.stdout, re.M)


def test_with_json_a_run_prints_the_json_and_nothing_else(gdpr: Callable[..., Result]) -> None:
    ran = gdpr("retention", "run", "--json")
    assert ran.exit_code == 0, ran.output
    [recorded] = json.loads(ran.stdout)
    assert (recorded["policy"], recorded["deleted"]) == ("shop.sessions", 3)


def test_on_a_terminal_a_policy_with_nothing_due_says_so_instead_of_a_full_bar(
    gdpr: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gdpr("retention", "run").exit_code == 0  # nothing is due afterwards
    monkeypatch.setattr(output, "is_tty", lambda: True)
    again = gdpr("retention", "run")
    assert again.exit_code == 0, again.output
    assert re.search(r"^\[ +\d+ s\] shop\.sessions: 0 item\(s\) due$", again.stdout, re.M)
    assert "1/1" not in again.stdout
