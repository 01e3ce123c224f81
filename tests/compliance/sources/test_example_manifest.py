"""The example manifest in ops/ stays valid as the connectors evolve."""

from __future__ import annotations

from pathlib import Path

from compliance.config import Settings
from compliance.sources.registry import load_registry

EXAMPLE = Path(__file__).resolve().parents[3] / "ops" / "sources.example.toml"
ENV = {
    "SHOP_DATABASE_URL": "sqlite:///shop.db",
    "CRM_DATABASE_URL": "sqlite:///crm.db",
    "CACHE_REDIS_URL": "redis://127.0.0.1:6379/9",
    "HELPDESK_TOKEN": "token",
}


def test_the_example_manifest_loads_every_kind(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, sources=str(EXAMPLE))
    registry = load_registry(settings, environ=ENV, pseudonym_key=b"k" * 32, connect=False)
    try:
        kinds = {source.name: source.kind for source in registry}
    finally:
        registry.close()
    assert kinds == {
        "shop": "sql",
        "crm": "sql",
        "avatars": "objectstore",
        "cache": "redis",
        "helpdesk": "http",
    }


def test_the_example_manifest_carries_the_typical_retention_policies(tmp_path: Path) -> None:
    from compliance.retention.catalog import Catalog

    settings = Settings(home=tmp_path, sources=str(EXAMPLE))
    registry = load_registry(settings, environ=ENV, pseudonym_key=b"k" * 32, connect=False)
    try:
        policies = {e.policy.name: e.policy for e in Catalog.of(registry.sources)}
    finally:
        registry.close()
    assert {name: p.days for name, p in policies.items()} == {
        "shop.users": 365,
        "shop.sessions": 30,
        "shop.activity_log": 30,
        "avatars.uploads/tmp/": 7,
        "cache.cart:*": 30,
        "cache.session:*": 30,
    }
    assert policies["shop.users"].kind == "subjects"
