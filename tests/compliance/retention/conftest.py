"""A retention harness: the retention sample app and a control database on one backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.keyring import Keyring, load_keyring
from compliance.retention.sweep import SweepContext
from compliance.sources.registry import Registry, load_registry
from tests.sample_app import retention as app
from tests.sample_app.fixtures import app_database


@dataclass
class Harness:
    settings: Settings
    db: Database
    keyring: Keyring
    url: str
    manifest: Path
    registry: Registry
    now: datetime = app.NOW
    dispatcher: RecordingDispatcher = field(default_factory=RecordingDispatcher)

    def ctx(self, *, owner: str = "test-worker", **overrides: Any) -> SweepContext:
        settings = self.settings.with_overrides(**overrides) if overrides else self.settings
        return SweepContext(
            settings=settings,
            db=self.db,
            keyring=self.keyring,
            sources=self.registry.sources,
            requests=self.dispatcher,
            clock=lambda: self.now,
            owner=owner,
        )

    def later(self, days: float) -> None:
        self.now = self.now + timedelta(days=days)

    def keys(self, table: str) -> set[int]:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return {row[0] for row in conn.execute(text(f"SELECT id FROM {table}"))}
        finally:
            engine.dispose()

    def reload(self, extra: str) -> None:
        """Write the manifest with `extra` appended and load it again."""
        self.manifest.write_text(app.MANIFEST.format(url=self.url, extra=extra), encoding="utf-8")
        self.reload_from_file()

    def reload_from_file(self) -> None:
        self.registry.close()
        self.registry = _registry(self.settings, self.keyring)


def _registry(settings: Settings, keyring: Keyring) -> Registry:
    return load_registry(settings, environ=os.environ, pseudonym_key=keyring.pseudonym_key)


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    name = "sqlite_settings" if request.param == "sqlite" else "pg_settings"
    base: Settings = request.getfixturevalue(name)
    with app_database(request.param, tmp_path, "retention") as url:
        app.create(url)
        manifest = tmp_path / "sources.toml"
        manifest.write_text(app.MANIFEST.format(url=url, extra=""), encoding="utf-8")
        settings = base.with_overrides(sources=str(manifest), retention_batch_size=4)
        db = Database.connect(settings)
        db.upgrade()
        keyring = load_keyring(settings)
        found = Harness(settings, db, keyring, url, manifest, _registry(settings, keyring))
        try:
            yield found
        finally:
            found.registry.close()
            db.dispose()
