"""Fixtures for the compliance tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sample_app.fixtures import cards_db, pg_sample_dbs, sample_dbs
from tests.support.tls_proxy import TlsPostgres, tls_postgres

__all__ = ["cards_db", "pg_sample_dbs", "sample_dbs"]


@pytest.fixture
def tls_pg(tmp_path: Path) -> Iterator[TlsPostgres]:
    """The machine's PostgreSQL behind a TLS front, reached by a name that is not local."""
    with tls_postgres(tmp_path / "tls") as front:
        yield front


@pytest.fixture
def tls_pg_client_certs(tmp_path: Path) -> Iterator[TlsPostgres]:
    """The same, refusing clients without a certificate from its CA."""
    with tls_postgres(tmp_path / "tls-client", client_certs=True) as front:
        yield front
