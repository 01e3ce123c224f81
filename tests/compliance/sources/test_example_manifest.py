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
