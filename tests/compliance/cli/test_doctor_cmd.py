"""`gdpr doctor` against real services: PostgreSQL, Redis, an S3 server, an SMTP server
and the sample app's SQL sources; then the same with each service pointed at a port where
nothing listens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from tests.sample_app.fixtures import SampleDatabases
from tests.support.services import free_port, pg_database


def doctor(settings: Settings, *args: str) -> tuple[int, list[dict[str, Any]]]:
    app = App()
    app._cache["settings"] = settings
    result = CliRunner().invoke(cli, ["doctor", "--json", *args], obj=app)
    return result.exit_code, json.loads(result.stdout)


def healthy(
    pg_settings: Settings,
    redis_url: str,
    s3_endpoint: str,
    s3_bucket: str,
    smtp_server: tuple[str, int, Path],
    manifest: Path,
) -> Settings:
    host, port, _ = smtp_server
    return pg_settings.with_overrides(
        broker_url=redis_url,
        storage_url=f"s3://{s3_bucket}/exports",
        s3_endpoint_url=s3_endpoint,
        mail_url=f"smtp://{host}:{port}",
        sources=str(manifest),
    )


@pytest.fixture
def settings_ok(
    pg_settings: Settings,
    redis_url: str,
    s3_endpoint: str,
    s3_bucket: str,
    smtp_server: tuple[str, int, Path],
    sample_dbs: SampleDatabases,
    tmp_path: Path,
) -> Settings:
    manifest = sample_dbs.write_manifest(tmp_path)
    return healthy(pg_settings, redis_url, s3_endpoint, s3_bucket, smtp_server, manifest)


def by_check(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in findings}


def test_every_part_answering_is_all_ok_and_exit_0(settings_ok: Settings) -> None:
    code, findings = doctor(settings_ok)
    found = by_check(findings)
    assert code == 0, findings
    for check in ("control database", "broker", "storage", "mail", "keyring", "sources"):
        assert found[check]["status"] == "ok", found[check]
    assert found["source shop"] == {"check": "source shop", "status": "ok", "detail": "sql"}
    assert "source crm" in found
    assert "(schema " in found["control database"]["detail"]


def test_each_part_not_answering_is_one_failed_line_and_exit_1(settings_ok: Settings) -> None:
    closed = free_port()
    broken = settings_ok.with_overrides(
        broker_url=f"redis://:s3cret@127.0.0.1:{closed}/0",
        s3_endpoint_url=f"http://127.0.0.1:{closed}",
        mail_url=f"smtp://127.0.0.1:{closed}",
    )
    code, findings = doctor(broken)
    found = by_check(findings)
    assert code == 1
    for check in ("broker", "storage", "mail"):
        assert found[check]["status"] == "FAIL", found[check]
        assert "\n" not in found[check]["detail"]
    assert found["control database"]["status"] == "ok"
    assert "s3cret" not in json.dumps(findings)
    assert f"127.0.0.1:{closed}" in found["mail"]["detail"]


def test_a_control_database_not_migrated_says_to_upgrade(settings_ok: Settings) -> None:
    with pg_database("doctor") as empty:
        code, findings = doctor(settings_ok.with_overrides(database_url=empty))
    found = by_check(findings)["control database"]
    assert code == 1
    assert found["status"] == "FAIL"
    assert found["detail"].endswith("run `gdpr db upgrade`")


def test_text_output_is_one_line_per_finding(settings_ok: Settings) -> None:
    app = App()
    app._cache["settings"] = settings_ok
    result = CliRunner().invoke(cli, ["doctor"], obj=app)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok    control database  ")
    assert len(lines) == len(doctor(settings_ok)[1])
