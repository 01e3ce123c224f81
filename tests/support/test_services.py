"""The suite's own servers stop when it is done; its databases carry the prefix and go."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support import services


def _databases() -> set[str]:
    engine = create_engine(services.pg_admin_url())
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_test_database_carries_the_prefix_and_is_dropped_afterwards() -> None:
    with services.pg_database("probe") as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith(services.DB_PREFIX + "probe_")
        assert name in _databases()
    assert name not in _databases()


@pytest.mark.smtp
def test_the_suites_own_smtp_server_answers_then_stops(tmp_path: Path) -> None:
    if services.SMTP_PORT:
        pytest.skip("GDPR_TEST_SMTP_PORT names an SMTP server the suite does not own")
    with services.smtp_server(tmp_path) as (host, port, maildir):
        with smtplib.SMTP(host, port, timeout=5) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: probe\r\n\r\nhi\r\n")
        assert len(list(maildir.glob("*.eml"))) == 1
    assert not services.answers(host, port, timeout=0.5)


@pytest.mark.s3
def test_the_suites_own_s3_server_stops_with_it(tmp_path: Path) -> None:
    if services.S3_PORT:
        pytest.skip("GDPR_TEST_S3_PORT names an S3 server the suite does not own")
    with services.s3_server(tmp_path) as endpoint:
        port = int(endpoint.rsplit(":", 1)[1])
        assert services.answers("127.0.0.1", port)
    assert not services.answers("127.0.0.1", port, timeout=0.5)
