from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from tests.compliance.helpers import write_small_manifest
from tests.sample_app.fixtures import SampleDatabases


def invoke(settings: Settings, *args: str) -> tuple[int, str]:
    app = App()
    app._cache["settings"] = settings
    result = CliRunner().invoke(cli, list(args), obj=app)
    return result.exit_code, result.stdout


def count_users(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = int(conn.execute(text("SELECT count(*) FROM users")).scalar_one())
    engine.dispose()
    return found


def test_plan_lists_what_erasure_would_do_and_changes_nothing(
    sqlite_settings: Settings, sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    manifest = sample_dbs.write_manifest(tmp_path)
    settings = sqlite_settings.with_overrides(sources=str(manifest))
    before = count_users(sample_dbs.shop_url)
    code, out = invoke(settings, "request", "plan", "--email", "Ada@Example.com", "--json")
    assert code == 0, out
    plan = json.loads(out)
    shop = next(s for s in plan["sources"] if s["source"] == "shop")
    by_location = {loc["location"]: loc for loc in shop["locations"]}
    assert by_location["users"]["deleted"] == 1
    assert by_location["payments"]["disposition"] == "anonymize"
    assert by_location["invoices"]["disposition"] == "retain"
    assert "commercial law" in by_location["invoices"]["legal_basis"]
    assert plan["identities"]["user_id"] == 1
    assert "ada@example.com" not in out
    assert count_users(sample_dbs.shop_url) == before

    code, table = invoke(settings, "request", "plan", "--email", "ada@example.com")
    assert code == 0
    assert "invoices" in table and "retain" in table


def test_planning_with_no_source_registered_exits_5_and_says_so(sqlite_settings: Settings) -> None:
    app = App()
    app._cache["settings"] = sqlite_settings
    result = CliRunner().invoke(cli, ["request", "plan", "--email", "ada@example.com"], obj=app)
    assert (result.exit_code, result.stdout) == (5, "")
    assert "error: no data source is registered, so none can look up a subject by email" in (
        result.stderr
    )


def test_planning_by_an_identity_no_source_answers_exits_5(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings.with_overrides(sources=str(write_small_manifest(tmp_path)))
    code, out = invoke(settings, "request", "plan", "--customer-id", "C-1", "--json")
    assert (code, out) == (5, "")


def test_planning_by_an_identity_a_source_answers_lists_it(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings.with_overrides(sources=str(write_small_manifest(tmp_path)))
    code, out = invoke(settings, "request", "plan", "--email", "ada@example.com", "--json")
    assert code == 0, out
    assert json.loads(out)["sources"][0]["source"] == "app"


def test_plan_shows_the_legal_basis_a_location_inherits_from_its_source(
    sqlite_settings: Settings, sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    manifest = sample_dbs.write_manifest(tmp_path)
    settings = sqlite_settings.with_overrides(sources=str(manifest))
    code, out = invoke(settings, "request", "plan", "--email", "ada@example.com", "--json")
    assert code == 0, out
    shop = next(s for s in json.loads(out)["sources"] if s["source"] == "shop")
    basis = {loc["location"]: loc.get("legal_basis") for loc in shop["locations"]}
    contract = "Art. 6(1)(b) GDPR: performance of a contract"  # set on [sources.shop] only
    assert basis["users"] == basis["orders"] == basis["profiles"] == contract
    assert basis["payments"] == "Art. 6(1)(c) GDPR: tax law, ten years"  # the table's own
    assert basis["payments.order_id"] == basis["payments"]  # a reference: its table's
    assert "commercial law" in str(basis["invoices"])

    code, table = invoke(settings, "request", "plan", "--email", "ada@example.com")
    users = next(line for line in table.splitlines() if line.startswith("shop    users "))
    assert users.endswith(contract)
