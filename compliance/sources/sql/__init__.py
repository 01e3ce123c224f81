"""The SQL connector (`kind = "sql"`): one database, any SQLAlchemy dialect (PostgreSQL and
SQLite tested). See README.md in this folder for the modules and the ownership model."""

from compliance.sources.sql.source import SqlSource, from_manifest

__all__ = ["SqlSource", "from_manifest"]
