"""Fixtures for the compliance tests."""

from tests.sample_app.fixtures import cards_db, pg_sample_dbs, sample_dbs

__all__ = ["cards_db", "pg_sample_dbs", "sample_dbs"]
