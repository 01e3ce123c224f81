"""Fixtures for the compliance tests."""

from tests.sample_app.fixtures import sample_dbs

__all__ = ["sample_dbs"]
