from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from tests.sample_app.fixtures import SampleDatabases


def invoke(settings: Settings, *args: str) -> tuple[int, str]:
    app = App()
    app._cache["settings"] = settings
    result = CliRunner().invoke(cli, list(args), obj=app)
    return result.exit_code, result.stdout if result.exit_code in (0, 1) else result.stderr


def test_list_shows_each_source_with_its_kind(
    sqlite_settings: Settings, sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    settings = sqlite_settings.with_overrides(sources=str(sample_dbs.write_manifest(tmp_path)))
    code, out = invoke(settings, "sources", "list", "--json")
    assert code == 0, out
    assert {"name": "shop", "kind": "sql"} in json.loads(out)


def test_check_reports_an_unregistered_table_and_exits_1(
    sqlite_settings: Settings, sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    settings = sqlite_settings.with_overrides(sources=str(sample_dbs.write_manifest(tmp_path)))
    assert invoke(settings, "sources", "check")[0] == 0
    engine = create_engine(sample_dbs.shop_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE wishlist (id INTEGER PRIMARY KEY, owner_email TEXT)"))
    engine.dispose()
    code, out = invoke(settings, "sources", "check")
    assert code == 1
    assert "wishlist" in out


def test_broken_manifest_is_a_one_line_error_with_exit_5(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    manifest = tmp_path / "sources.toml"
    manifest.write_text(
        '[sources.app]\nkind = "sql"\nurl = "sqlite:///x.db"\n[sources.app.tables.userz]\n'
    )
    code, out = invoke(sqlite_settings.with_overrides(sources=str(manifest)), "sources", "list")
    assert code == 5
    error = out.splitlines()[-1]
    assert error == "error: sources.app.tables.userz: no table 'userz' in the database"
