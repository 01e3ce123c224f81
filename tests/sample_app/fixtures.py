"""Fixtures that build the sample application's databases on SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tests.sample_app import cards, schema
from tests.support.services import pg_database


@dataclass(frozen=True)
class SampleDatabases:
    backend: str
    shop_url: str
    crm_url: str

    def manifest(self) -> str:
        return schema.manifest(self.shop_url, self.crm_url)

    def write_manifest(self, folder: Path, extra: str = "") -> Path:
        path = folder / "sources.toml"
        path.write_text(self.manifest() + extra, encoding="utf-8")
        return path


@pytest.fixture(params=["sqlite", "postgres"])
def sample_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SampleDatabases]:
    """The sample shop and CRM databases, filled, on each backend."""
    with sample_databases(request.param, tmp_path) as dbs:
        yield dbs


@pytest.fixture
def pg_sample_dbs(tmp_path: Path) -> Iterator[SampleDatabases]:
    """The sample databases on PostgreSQL only (for behaviour SQLite does not have)."""
    with sample_databases("postgres", tmp_path) as dbs:
        yield dbs


@contextmanager
def sample_databases(backend: str, tmp_path: Path) -> Iterator[SampleDatabases]:
    if backend == "sqlite":
        shop = f"sqlite:///{tmp_path / 'shop.db'}"
        crm = f"sqlite:///{tmp_path / 'crm.db'}"
        _fill(shop, crm)
        yield SampleDatabases("sqlite", shop, crm)
        return
    with ExitStack() as stack:
        shop = stack.enter_context(pg_database("sample_shop"))
        crm = stack.enter_context(pg_database("sample_crm"))
        _fill(shop, crm)
        yield SampleDatabases("postgres", shop, crm)


def _fill(shop_url: str, crm_url: str) -> None:
    shop, crm = create_engine(shop_url), create_engine(crm_url)
    try:
        schema.create(shop, crm)
    finally:
        shop.dispose()
        crm.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def cards_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The card shop (`tests.sample_app.cards`), filled, on each backend: its URL."""
    with cards_database(request.param, tmp_path) as url:
        yield url


@contextmanager
def cards_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'cards.db'}"
        _fill_cards(url)
        yield url
        return
    with pg_database("cards") as url:
        _fill_cards(url)
        yield url


def _fill_cards(url: str) -> None:
    engine = create_engine(url)
    try:
        cards.create(engine)
    finally:
        engine.dispose()


@contextmanager
def app_database(backend: str, tmp_path: Path, label: str) -> Iterator[str]:
    """An empty database named after `label` on `backend` (PostgreSQL: created and
    dropped here), as a URL."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'{label}.db'}"
        return
    with pg_database(label) as url:
        yield url
