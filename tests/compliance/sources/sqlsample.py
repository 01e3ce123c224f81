"""Helpers for tests on the sample application's databases."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, select

from compliance.config import Settings
from compliance.identities import Identities, Identity, parse_identity
from compliance.sources.base import DataSource
from compliance.sources.registry import Registry, load_registry
from tests.sample_app.fixtures import SampleDatabases

PSEUDONYM_KEY = b"k" * 32


def ada_email() -> Identities:
    return Identities.of([parse_identity("email", "ada@example.com")])


def ada_resolved() -> Identities:
    """Every identity Ada has across the shop and the CRM."""
    return Identities.of(
        [
            parse_identity("email", "ada@example.com"),
            parse_identity("user_id", "1"),
            parse_identity("customer_id", "C-0001"),
        ]
    )


def load(
    dbs: SampleDatabases,
    folder: Path,
    extra: str = "",
    manifest: str = "",
    lock_timeout_ms: int = 2000,
) -> Registry:
    path = folder / "sources.toml"
    path.write_text(manifest or (dbs.manifest() + extra), encoding="utf-8")
    settings = Settings(home=folder / ".gdpr", sources=str(path), lock_timeout_ms=lock_timeout_ms)
    return load_registry(settings, environ={}, pseudonym_key=PSEUDONYM_KEY)


def snapshot(url: str) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every row of every table in the database at `url`, by table and primary key."""
    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        found: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        with engine.connect() as conn:
            for name, t in meta.tables.items():
                pk = [c.name for c in t.primary_key.columns]
                found[name] = {
                    tuple(row[c] for c in pk): dict(row)
                    for row in conn.execute(select(t)).mappings()
                }
        return found
    finally:
        engine.dispose()


def rows(url: str, table: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every row of `table` by primary key."""
    return snapshot(url)[table]


def keys(url: str, table: str) -> set[tuple[Any, ...]]:
    """Primary keys of every row of `table`."""
    return set(rows(url, table))


def erase_all(
    sources: Iterable[DataSource], identities: Identities, batch: int = 1000
) -> dict[str, int]:
    """Run every source's erasure to the end; total counts."""
    totals = {"deleted": 0, "anonymized": 0, "retained": 0, "detached": 0, "others": 0}
    for source in sources:
        checkpoint: dict[str, Any] = {}
        for _ in range(10_000):
            result = source.erase(identities, checkpoint, batch)
            totals["deleted"] += result.deleted
            totals["anonymized"] += result.anonymized
            totals["retained"] += result.retained
            totals["detached"] += result.detached
            totals["others"] += result.others
            checkpoint = dict(result.checkpoint)
            if result.done:
                break
    return totals


def raw(kind: str, value: str) -> Identities:
    """An identity that skipped validation (what a buggy caller might pass)."""
    return Identities.of([Identity(kind, value)])
