from tests.sample_app.fixtures import pg_sample_dbs

__all__ = ["pg_sample_dbs"]
