"""Reading the sources manifest: typed, path-aware access to its TOML tables.

A connector's factory receives a `Spec`: the source's table plus where it sits in the
manifest, so every error names the entry (``sources.app.tables.users: unknown key
'on_delet'``). Read what you need with the typed getters, then call `done()`: a key
nobody read is a typo or a setting that does nothing, and both are errors.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from compliance.errors import ManifestError
from compliance.sources.base import Art15

T = TypeVar("T")


def read_manifest(path: Path) -> dict[str, Any]:
    """Parse the manifest file; a syntax error names its line."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read the sources manifest {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: {exc}") from exc


@dataclass
class Spec:
    """One manifest table and its entry path; tracks which keys were read."""

    data: Mapping[str, Any]
    path: str
    _read: set[str] = field(default_factory=set)

    def error(self, message: str) -> ManifestError:
        return ManifestError(f"{self.path}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, kind: type[T], default: T | None, required: bool) -> T | None:
        self._read.add(key)
        if key not in self.data:
            if required:
                raise self.error(f"missing required key '{key}'")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"'{key}' must be a {_kind_name(kind)}, not {_kind_name(type(value))}")
        return value

    def string(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self._get(key, str, default, required)
        assert value is not None
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(f"'{key}' must be one of {', '.join(choices)}; got {value!r}")
        return value

    def integer(self, key: str, default: int = 0, *, minimum: int | None = None) -> int:
        value = self._get(key, int, default, False)
        assert value is not None
        if minimum is not None and value < minimum:
            raise self.error(f"'{key}' must be at least {minimum}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._get(key, bool, default, False)
        assert value is not None
        return value

    def list_of_str(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self._get(key, list, [], required)
        assert value is not None
        if not all(isinstance(item, str) for item in value):
            raise self.error(f"'{key}' must be a list of strings")
        return tuple(value)

    def raw(self, key: str, default: Any = None) -> Any:
        """An untyped value (for connectors with their own structured settings)."""
        self._read.add(key)
        return self.data.get(key, default)

    def table(self, key: str) -> Spec:
        """A child table (empty if absent)."""
        value = self._get(key, dict, {}, False)
        assert value is not None
        return Spec(value, f"{self.path}.{key}")

    def tables(self, key: str) -> Iterator[tuple[str, Spec]]:
        """The child tables of a table of tables, in manifest order."""
        parent = self.table(key)
        for name, value in parent.data.items():
            if not isinstance(value, dict):
                raise parent.error(f"'{name}' must be a table")
            yield name, Spec(value, f"{parent.path}.{name}")

    def table_list(self, key: str) -> Iterator[Spec]:
        """An array of tables (``references = [{...}, {...}]``)."""
        value = self._get(key, list, [], False)
        assert value is not None
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"'{key}' entry {index + 1} must be a table")
            yield Spec(item, f"{self.path}.{key}[{index + 1}]")

    def art15(self, defaults: Art15 | None = None) -> Art15:
        """GDPR Art. 15 facts at this entry; each key it does not set comes from
        `defaults` (the source's), except `description`, which names this entry alone.
        ``recipients = []`` says "nobody"; leaving it out says nothing. A `retention`
        table is a policy, not text: the connector phrases it."""
        defaults = defaults or Art15()
        recipients = self.list_of_str("recipients") if self.has("recipients") else None
        return Art15(
            description=self.string("description"),
            purpose=self.string("purpose", defaults.purpose),
            legal_basis=self.string("legal_basis", defaults.legal_basis),
            recipients=defaults.recipients if recipients is None else recipients,
            retention=self._retention_text(defaults.retention),
            origin=self.string("origin", defaults.origin),
        )

    def _retention_text(self, default: str) -> str:
        """`retention` when it is text; `default` when it is absent or a policy."""
        if isinstance(self.data.get("retention", ""), str):
            return self.string("retention", default)
        return default

    def done(self) -> None:
        """Raise for the first key nobody read (a typo, or a setting that does nothing)."""
        for key in self.data:
            if key not in self._read:
                raise self.error(f"unknown key '{key}'")


def _kind_name(kind: type) -> str:
    return {
        str: "string",
        int: "integer",
        bool: "boolean",
        list: "list",
        dict: "table",
        float: "number",
    }.get(kind, kind.__name__)
