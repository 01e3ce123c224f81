"""The source registry: every data source of an installation, loaded in one place.

Sources are declared in the manifest (``sources.toml``), one table each under
``[sources.<name>]`` with a ``kind``. A kind names a connector factory: the built-in ones
below, or a custom one registered as a Python entry point in the group ``gdpr.sources``
(entry point name = kind, object = factory). Loading validates everything up front
(unknown kinds, keys, tables and columns, duplicates) so a bad manifest fails at startup,
never half-way through an erasure; every mistake is reported at once, in manifest order.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from compliance.config import Settings
from compliance.errors import ComplianceError, ConfigError, ManifestError
from compliance.sources.base import DataSource
from compliance.sources.manifest import Spec, read_manifest

ENTRY_POINT_GROUP = "gdpr.sources"
TOP_LEVEL_KEYS = frozenset({"sources"})
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

# kind -> "module:factory", imported only when a manifest uses the kind.
BUILTIN_KINDS: Mapping[str, str] = {
    "sql": "compliance.sources.sql:from_manifest",
    "objectstore": "compliance.sources.objectstore:from_manifest",
    "redis": "compliance.sources.rediskeys:from_manifest",
    "http": "compliance.sources.http:from_manifest",
}


@dataclass(frozen=True)
class LoadContext:
    """What a connector factory may use besides its own manifest entry."""

    settings: Settings
    environ: Mapping[str, str]  # secrets named in the manifest are read from here
    pseudonym_key: bytes  # HMAC key, e.g. for the `hmac` anonymise strategy
    base_dir: Path  # folder of the manifest: relative paths resolve against it
    connect: bool = True  # validate against the live systems while loading


Factory = Callable[[str, Spec, LoadContext], DataSource]


@dataclass(frozen=True)
class Registry:
    """The loaded sources, in manifest order. Close it to release connections."""

    sources: tuple[DataSource, ...] = ()
    path: Path | None = None

    def __iter__(self) -> Iterator[DataSource]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def get(self, name: str) -> DataSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise ManifestError(f"no source named {name!r}; `gdpr sources list` shows them")

    def close(self) -> None:
        for source in self.sources:
            source.close()


def load_registry(
    settings: Settings,
    *,
    environ: Mapping[str, str],
    pseudonym_key: bytes,
    connect: bool = True,
    kinds: Mapping[str, Factory] | None = None,
) -> Registry:
    """Load and validate every source of `settings.sources_path` (none: empty registry).

    `kinds` adds connector kinds besides the built-in ones and the entry points (tests).
    """
    path = settings.sources_path
    if path is None:
        return Registry()
    if not path.exists():
        raise ManifestError(f"sources manifest {path} does not exist; fix GDPR_SOURCES")
    ctx = LoadContext(settings, environ, pseudonym_key, path.resolve().parent, connect)
    return Registry(load_sources(read_manifest(path), ctx, _all_kinds(kinds)), path)


def load_sources(
    manifest: Mapping[str, Any], ctx: LoadContext, kinds: Mapping[str, Factory | str]
) -> tuple[DataSource, ...]:
    """Build every source of a parsed manifest, reporting every manifest error at once.

    A source that fails does not stop the others being checked: each one's
    `ManifestError` (or other `ConfigError`) is collected, and at the end one
    `ManifestError` lists them all in manifest order. Any other error of a source (it
    cannot be reached, it refuses access) is raised only when the manifest itself is
    sound. On any error the sources already opened are closed.
    """
    problems: list[ManifestError] = [
        ManifestError(f"unknown top-level key '{key}' in the sources manifest")
        for key in manifest
        if key not in TOP_LEVEL_KEYS
    ]
    loaded: list[DataSource] = []
    other: ComplianceError | None = None
    try:
        for name, spec in _entries(manifest, problems):
            try:
                loaded.append(_load_one(name, spec, ctx, kinds))
            except ConfigError as exc:
                problems.append(_as_manifest_error(exc))
            except ComplianceError as exc:
                other = other or exc
        if problems:
            raise ManifestError.of(problems) from other
        if other is not None:
            raise other
    except BaseException:
        for source in loaded:
            source.close()
        raise
    return tuple(loaded)


def _entries(
    manifest: Mapping[str, Any], problems: list[ManifestError]
) -> Iterator[tuple[str, Spec]]:
    """The `[sources.<name>]` tables in manifest order; a malformed one is a problem."""
    sources = manifest.get("sources", {})
    if not isinstance(sources, Mapping):
        problems.append(ManifestError("'sources' must be a table of [sources.<name>] tables"))
        return
    for name, data in sources.items():
        if not isinstance(data, Mapping):
            problems.append(ManifestError(f"sources: '{name}' must be a table"))
            continue
        yield name, Spec(data, f"sources.{name}")


def _as_manifest_error(exc: ConfigError) -> ManifestError:
    return exc if isinstance(exc, ManifestError) else ManifestError(str(exc))


def _load_one(
    name: str, spec: Spec, ctx: LoadContext, kinds: Mapping[str, Factory | str]
) -> DataSource:
    if not _NAME.match(name):
        raise spec.error("a source name is 1-64 lowercase letters, digits, '_' or '-'")
    kind = spec.string("kind", required=True)
    if kind not in kinds:
        known = ", ".join(sorted(kinds))
        raise spec.error(f"unknown kind {kind!r}; known kinds: {known}")
    source = _factory(kind, kinds[kind], spec)(name, spec, ctx)
    try:
        spec.done()
        if source.name != name:
            raise spec.error(f"the {kind} connector named its source {source.name!r}, not {name!r}")
    except BaseException:
        source.close()
        raise
    return source


def _factory(kind: str, target: Factory | str, spec: Spec) -> Factory:
    if not isinstance(target, str):
        return target
    module_name, _, attrs = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise spec.error(f"the {kind} connector is not available in this installation") from exc
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    factory: Factory = obj
    return factory


def _all_kinds(extra: Mapping[str, Factory] | None) -> dict[str, Factory | str]:
    kinds: dict[str, Factory | str] = dict(BUILTIN_KINDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in kinds:
            raise ManifestError(
                f"entry point {ep.value!r} registers kind {ep.name!r}, which already exists"
            )
        kinds[ep.name] = ep.value
    for name, factory in (extra or {}).items():
        if name in kinds:
            raise ManifestError(f"connector kind {name!r} is registered twice")
        kinds[name] = factory
    return kinds
