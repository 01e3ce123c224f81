from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from compliance.db import Database, current_revision
from compliance.models import Base


def test_migrations_build_exactly_the_schema_the_models_describe(db: Database) -> None:
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_upgrading_twice_is_harmless(db: Database) -> None:
    before = current_revision(db.engine)
    assert before is not None
    db.upgrade()
    assert current_revision(db.engine) == before
