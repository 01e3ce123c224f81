"""`gdpr worker` checks the sources manifest against the live systems before Celery starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from tasks import app as celery_app
from tests.compliance.helpers import SMALL_MANIFEST, write_small_manifest


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Celery's `worker_main`, recorded instead of run (the argv of each start)."""
    calls: list[list[str]] = []
    before = dict(celery_app._state)
    monkeypatch.setattr(celery_app.app, "worker_main", lambda argv: calls.append(argv))
    yield calls
    celery_app._state.clear()
    celery_app._state.update(before)


def worker(settings: Settings, manifest: Path, *args: str) -> tuple[Result, App]:
    app = App()
    app._cache["settings"] = settings.with_overrides(sources=str(manifest))
    return CliRunner().invoke(cli, ["worker", *args], obj=app), app


def error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "keyring.development" not in line]


@pytest.mark.parametrize("beat", [(), ("--beat",)], ids=["worker", "worker-with-beat"])
def test_a_worker_refuses_to_start_on_a_manifest_error_with_one_line_and_exit_5(
    sqlite_settings: Settings, tmp_path: Path, started: list[list[str]], beat: tuple[str, ...]
) -> None:
    manifest = write_small_manifest(tmp_path)  # `userz` is only found missing live
    manifest.write_text(SMALL_MANIFEST + "\n[sources.app.tables.userz]\n", encoding="utf-8")
    result, _ = worker(sqlite_settings, manifest, *beat)
    assert result.exit_code == 5
    (line,) = error_lines(result)
    assert line.startswith("error: sources.app.tables.userz: no table 'userz'")
    assert started == []


def test_a_worker_with_a_sound_manifest_starts_celery_and_releases_the_sources(
    sqlite_settings: Settings, tmp_path: Path, started: list[list[str]]
) -> None:
    result, app = worker(sqlite_settings, write_small_manifest(tmp_path), "--beat")
    assert result.exit_code == 0, result.output
    assert len(started) == 1 and started[0][:2] == ["worker", "-Q"] and "-B" in started[0]
    assert "registry" not in app._cache  # the worker's processes load their own


def test_a_worker_whose_source_is_unreachable_warns_and_starts(
    sqlite_settings: Settings, tmp_path: Path, started: list[list[str]]
) -> None:
    manifest = write_small_manifest(tmp_path)
    unreachable = "postgresql+psycopg://nobody@127.0.0.1:1/app?connect_timeout=1"
    manifest.write_text(SMALL_MANIFEST.replace("sqlite:///app.db", unreachable))
    result, _ = worker(sqlite_settings, manifest)
    assert result.exit_code == 0, result.output
    (line,) = error_lines(result)
    assert line.startswith("warning: ") and line.endswith("; starting anyway")
    assert len(started) == 1


def test_beat_creates_its_folder_and_prints_its_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compliance.cli.worker_cmd import prepare_beat

    settings = Settings(home=tmp_path / "missing" / ".gdpr", retention_cron="30 3 * * *")
    prepare_beat(settings)
    assert settings.home.is_dir()
    out = capsys.readouterr().out
    assert "beat: retention sweep at '30 3 * * *' (UTC)" in out
    assert "beat: maintenance sweep every 60 s" in out


def test_beat_refuses_in_one_line_when_its_folder_cannot_be_made(tmp_path: Path) -> None:
    from compliance.cli.worker_cmd import prepare_beat
    from compliance.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot create .* set GDPR_HOME to a writable"):
        prepare_beat(Settings(home=blocker / ".gdpr"))
