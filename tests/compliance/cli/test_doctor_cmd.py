"""`gdpr doctor` against real services: PostgreSQL, Redis, an S3 server, an SMTP server
and the sample app's SQL sources; then the same with each service pointed at a port where
nothing listens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from tests.sample_app.fixtures import SampleDatabases
from tests.support.services import free_port, pg_database
from tests.support.tls_proxy import SERVER_NAME, TlsPostgres


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


# --- TLS of the control database and of every SQL source ------------------------------------


@pytest.fixture
def app_url() -> Iterator[str]:
    """An application database with one personal table, on the machine's PostgreSQL."""
    with pg_database("doctor_app") as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE users (id serial PRIMARY KEY, email text)"))
        engine.dispose()
        yield url


def sql_source(name: str, url: str, keys: str = "") -> str:
    return (
        f'[sources.{name}]\nkind = "sql"\nurl = "{url}"\n{keys}\n'
        f'[sources.{name}.tables.users]\nidentities = {{ email = "email" }}\n'
    )


@pytest.fixture
def services_ok(
    pg_settings: Settings,
    redis_url: str,
    s3_endpoint: str,
    s3_bucket: str,
    smtp_server: tuple[str, int, Path],
    tmp_path: Path,
) -> Settings:
    """Every service answering; no sources yet (each test writes its manifest)."""
    manifest = tmp_path / "sources.toml"
    return healthy(pg_settings, redis_url, s3_endpoint, s3_bucket, smtp_server, manifest)


def test_a_remote_control_database_is_fine_once_its_tls_settings_verify_it(
    services_ok: Settings, tls_pg: TlsPostgres
) -> None:
    remote = services_ok.with_overrides(
        database_url=tls_pg.url(services_ok.database_url), sources=""
    )
    code, findings = doctor(remote)
    control = [f for f in findings if f["check"] == "control database"]
    assert code == 0 and [f["status"] for f in control] == ["ok", "warn"], control
    assert control[1]["detail"].startswith(f"{SERVER_NAME} is not verified TLS (sslmode=unset)")
    assert "GDPR_DB_SSLMODE=verify-full" in control[1]["detail"]

    verified = remote.with_overrides(db_sslmode="verify-full", db_sslrootcert=str(tls_pg.ca))
    code, findings = doctor(verified)
    control = [f for f in findings if f["check"] == "control database"]
    assert code == 0 and [f["status"] for f in control] == ["ok"], control


def test_every_sql_source_is_checked_for_verified_tls_by_its_manifest_keys(
    services_ok: Settings, tls_pg: TlsPostgres, app_url: str
) -> None:
    remote = tls_pg.url(app_url)
    verified = f'sslmode = "verify-full"\nsslrootcert = "{tls_pg.ca}"'
    Path(services_ok.sources).write_text(
        sql_source("plain", remote) + sql_source("verified", remote, verified),
        encoding="utf-8",
    )
    code, findings = doctor(services_ok)
    assert code == 0, findings
    plain = [f for f in findings if f["check"] == "source plain"]
    assert [f["status"] for f in plain] == ["ok", "warn"]
    assert plain[1]["detail"].startswith(f"{SERVER_NAME} is not verified TLS (sslmode=unset)")
    assert 'sslmode = "verify-full"' in plain[1]["detail"]
    assert [f["status"] for f in findings if f["check"] == "source verified"] == ["ok"]


def test_a_source_refusing_its_tls_fails_in_one_line_and_is_still_checked(
    services_ok: Settings, app_url: str
) -> None:
    by_name = app_url.replace("@127.0.0.1:", f"@{SERVER_NAME}:") + "?hostaddr=127.0.0.1"
    Path(services_ok.sources).write_text(
        sql_source("shop", by_name, 'sslmode = "require"'), encoding="utf-8"
    )
    code, findings = doctor(services_ok)
    found = by_check(findings)
    assert code == 1
    assert found["sources"]["status"] == "FAIL"
    assert found["sources"]["detail"].startswith("source shop: database unavailable")
    assert "server does not support SSL" in found["sources"]["detail"]
    assert found["source shop"]["status"] == "warn"
    assert "(sslmode=require)" in found["source shop"]["detail"]
