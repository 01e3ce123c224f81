"""Alembic environment: migrations run on the engine handed in by `compliance.db`."""

from __future__ import annotations

from alembic import context

from compliance.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # pragma: no cover - only when alembic is run by hand
    from compliance.config import load_settings
    from compliance.db import make_engine

    settings = load_settings()
    engine = make_engine(settings.control_url, settings.control_pool, settings.control_tls)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
