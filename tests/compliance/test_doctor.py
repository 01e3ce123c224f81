"""`compliance.doctor`: which connections are not verified TLS, and how failures read."""

from __future__ import annotations

import pytest

from compliance import doctor
from compliance.config import Settings
from compliance.doctor import Check, Status
from compliance.pools import Tls


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://gdpr:pw@127.0.0.1:5432/gdpr",
        "postgresql+psycopg://gdpr@localhost/gdpr",
        "postgresql+psycopg://gdpr@[::1]:5432/gdpr",
        "postgresql+psycopg:///gdpr?host=/var/run/postgresql",
        "postgresql+psycopg://gdpr@db.internal/gdpr?sslmode=verify-full&sslrootcert=/ca.pem",
        "sqlite:////tmp/control.db",
        "redis://db.internal:6379/0",
    ],
)
def test_local_or_verified_connections_raise_no_warning(url: str) -> None:
    assert doctor.tls_warning("control database", url) is None


@pytest.mark.parametrize(
    ("url", "mode"),
    [
        ("postgresql+psycopg://gdpr:pw@db.internal:5432/gdpr", "unset"),
        ("postgresql+psycopg://gdpr@10.0.0.5/gdpr?sslmode=require", "require"),
        (
            "postgresql+psycopg://gdpr@127.0.0.1/gdpr?host=db2.internal&sslmode=verify-ca",
            "verify-ca",
        ),
    ],
)
def test_a_remote_connection_without_verified_tls_is_a_warning(url: str, mode: str) -> None:
    warning = doctor.tls_warning("source shop", url)
    assert warning is not None and warning.status == Status.WARN
    assert f"sslmode={mode}" in warning.detail and "sslmode=verify-full" in warning.detail
    assert "pw" not in warning.detail


def test_a_failing_probe_is_one_line_without_the_password() -> None:
    def broken() -> str:
        raise RuntimeError("cannot reach\n redis://app:s3cret@cache.internal:6379/0 now")

    (finding,) = doctor.run([Check("broker", broken)])
    assert finding.status == Status.FAIL
    assert finding.detail == "cannot reach redis://***@cache.internal:6379/0 now"
    assert doctor.failed([finding])


def test_tls_settings_beside_the_url_count_as_the_connections_tls() -> None:
    url = "postgresql+psycopg://gdpr@db.internal/gdpr"
    assert doctor.tls_warning("source shop", url, Tls(sslmode="verify-full")) is None
    warning = doctor.tls_warning("source shop", url, Tls(sslmode="require"))
    assert warning is not None and "(sslmode=require)" in warning.detail


def test_the_control_database_warning_names_its_settings() -> None:
    settings = Settings(database_url="postgresql+psycopg://gdpr@db.internal/gdpr")
    warning = doctor.control_tls_warning(settings)
    assert warning is not None and warning.check == "control database"
    assert "GDPR_DB_SSLMODE=verify-full and GDPR_DB_SSLROOTCERT=<CA file>" in warning.detail
    verified = settings.with_overrides(db_sslmode="verify-full", db_sslrootcert="system")
    assert doctor.control_tls_warning(verified) is None
