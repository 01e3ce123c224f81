"""`gdpr request show` of requests a worker really ran (the task runtime on the sample
shop and CRM): a dry run says so and prints what it would do, a receipt's totals agree
with its rows, the next step is in the text as well as in `--json`, and `--follow`
prints plain progress lines when stdout is not a terminal and nothing extra with --json.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.worker import Outcome
from tasks import app as celery_app
from tasks import runtime
from tests.conftest import make_test_keys
from tests.sample_app.fixtures import sample_databases

Gdpr = Callable[..., Result]


@pytest.fixture
def gdpr(sqlite_settings: Settings, tmp_path: Path) -> Iterator[Gdpr]:
    """`gdpr ARGS` on the sample shop and CRM (SQLite), with the task runtime set up on
    the same settings so `runtime.run` is the worker running a request."""
    with sample_databases("sqlite", tmp_path) as dbs:
        manifest = dbs.write_manifest(tmp_path)
        settings = sqlite_settings.with_overrides(sources=str(manifest), **make_test_keys())
        db = Database.connect(settings)
        db.upgrade()
        before = dict(celery_app._state)
        celery_app.configure(settings)
        runtime.reset()

        def invoke(*args: str, operator: str = "alice") -> Result:
            app = App()
            app._cache.update(
                settings=settings.with_overrides(operator=operator),
                db=db,
                dispatcher=RecordingDispatcher(),
            )
            app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
            return CliRunner().invoke(cli, list(args), obj=app)

        yield invoke
        runtime.reset()
        celery_app._state.clear()
        celery_app._state.update(before)
        db.dispose()


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_by_the_worker(gdpr: Gdpr, *args: str) -> str:
    """Submit `gdpr request ARGS` (approved by a second operator if it must be), run it
    as a worker would; its id."""
    created = _json(gdpr("request", *args, "--json"))
    if created["status"] == "awaiting_approval":
        _json(gdpr("request", "approve", created["id"], "--json", operator="bob"))
    assert runtime.run(uuid.UUID(created["id"])) == Outcome.COMPLETED
    return str(created["id"])


def table_rows(text: str, header: str) -> list[dict[str, str]]:
    """The rows of the table under the line starting with `header` (columns by the
    header's positions), up to the first line that does not belong to it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = lines[start].split()
    starts = [lines[start].index(name) for name in names]
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or re.match(r"[a-z][\w'()]*( [\w'()]+)*: ", line):  # "next: "
            break
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def test_show_of_a_dry_run_erasure_says_so_prints_what_it_would_do_and_the_next_step(
    gdpr: Gdpr,
) -> None:
    rid = run_by_the_worker(gdpr, "erase", "--email", "ada@example.com", "--dry-run")
    shown = gdpr("request", "show", rid)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert re.search(r"^dry run +yes: planned only; nothing was changed or mailed$", text, re.M)
    assert re.search(r"^status +completed$", text, re.M)
    steps = table_rows(text, "SOURCE  ACTION")
    assert steps and all(step["STATUS"] == "done" for step in steps), steps
    assert "receipt: what the erasure would do" in text
    users = next(r for r in table_rows(text, "SOURCE  LOCATION") if r["LOCATION"] == "users")
    assert (users["SCOPE"], users["ACTION"], users["COUNT"]) == ("subject", "delete", "1")
    assert "the subject's own rows" not in text  # a dry run erased nothing
    hint = "a dry run changed nothing: submit `gdpr request erase` without --dry-run"
    assert f"next: {hint}" in text
    view = _json(gdpr("request", "show", rid, "--json"))
    assert (view["dry_run"], view["next"], view["receipt"]["dry_run"]) == (True, [hint], True)
    assert "ada@example.com" not in text + json.dumps(view)


def test_an_erasure_receipt_s_totals_are_the_sums_of_its_rows(gdpr: Gdpr) -> None:
    rid = run_by_the_worker(gdpr, "erase", "--email", "ada@example.com", "--ticket", "T-5")
    text = gdpr("request", "show", rid).stdout
    rows = table_rows(text[text.index("\nreceipt\n") :].lstrip(), "SOURCE  LOCATION")
    own = {"delete": 0, "anonymize": 0, "retain": 0}
    besides: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["SCOPE"] == "subject":
            own[row["ACTION"]] += int(row["COUNT"])
        else:
            key = (row["SCOPE"], row["ACTION"])
            besides[key] = besides.get(key, 0) + int(row["COUNT"])
    said = re.search(
        r"^the subject's own rows \(scope subject\): deleted (\d+), anonymized (\d+),"
        r" retained (\d+)$",
        text,
        re.M,
    )
    assert said is not None, text
    assert [int(n) for n in said.groups()] == [own["delete"], own["anonymize"], own["retain"]]
    assert own["delete"] > 0 and besides, rows
    line = next(line for line in text.splitlines() if line.startswith("besides: "))
    assert f"shared rows kept for others {besides[('shared', 'retain')]}" in line
    assert f"links to them removed from kept rows {besides[('reference', 'detach')]}" in line
    assert "verified: nothing left" in text


def test_follow_prints_plain_progress_lines_off_a_terminal_and_nothing_extra_with_json(
    gdpr: Gdpr,
) -> None:
    rid = run_by_the_worker(gdpr, "export", "--email", "ada@example.com")
    followed = gdpr("request", "show", rid, "--follow")
    assert followed.exit_code == 0, followed.output
    first, *rest = followed.stdout.splitlines()
    assert re.fullmatch(r"\[ +\d+ s\] completed \| \* discover done .*", first), first
    assert "\r" not in followed.stdout and "\x1b" not in followed.stdout
    assert re.match(r"id +" + rid, rest[0])
    as_json = gdpr("request", "show", rid, "--follow", "--json")
    assert json.loads(as_json.stdout)["status"] == "completed"  # the JSON and nothing else
