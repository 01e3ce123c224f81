"""The human-readable index of a package: what we hold, from where, why, and for how long."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from compliance.sources.base import Art15, FileItem, RowsItem

TEMPLATES = Path(__file__).resolve().parent.parent / "compliance" / "templates"


@dataclass(frozen=True)
class Collection:
    """One table/collection in the package and its Art. 15 facts."""

    name: str
    rows: int
    json_path: str
    csv_path: str
    meta: Art15
    shared: bool = False  # rows shared with other people, e.g. an address two customers use


@dataclass(frozen=True)
class FileGroup:
    """The files of one source that share the same Art. 15 facts."""

    folder: str
    count: int
    size: int
    meta: Art15


@dataclass(frozen=True)
class SourceSection:
    source: str
    collections: tuple[Collection, ...]
    files: tuple[FileGroup, ...]


class IndexBuilder:
    """Collects per-collection counts while the package streams (no row data kept)."""

    def __init__(self) -> None:
        self._collections: dict[str, list[Collection]] = {}
        self._files: dict[str, dict[Art15, tuple[int, int]]] = {}

    def add_rows(self, item: RowsItem, rows: int, json_path: str, csv_path: str) -> None:
        entry = Collection(item.collection, rows, json_path, csv_path, item.meta, item.shared)
        self._collections.setdefault(item.source, []).append(entry)

    def add_file(self, item: FileItem, size: int) -> None:
        groups = self._files.setdefault(item.source, {})
        count, total = groups.get(item.meta, (0, 0))
        groups[item.meta] = (count + 1, total + size)

    def sections(self) -> list[SourceSection]:
        names = list(dict.fromkeys([*self._collections, *self._files]))
        return [self._section(name) for name in names]

    def _section(self, source: str) -> SourceSection:
        from exporters.writers import safe_segment

        groups = tuple(
            FileGroup(f"files/{safe_segment(source)}/", count, size, meta)
            for meta, (count, size) in self._files.get(source, {}).items()
        )
        found = self._collections.get(source, [])
        about_you = [c for c in found if not c.shared]
        return SourceSection(source, (*about_you, *(c for c in found if c.shared)), groups)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["human_size"] = human_size
    return env


def render_index(
    sections: list[SourceSection],
    *,
    request_id: str,
    generated_at: datetime,
    subject_label: str,
    controller: str,
) -> str:
    template = _environment().get_template("export/index.html")
    return template.render(
        sections=sections,
        request_id=request_id,
        generated_at=generated_at.strftime("%d %B %Y, %H:%M %Z").strip(),
        subject_label=subject_label,
        controller=controller,
        total_rows=sum(c.rows for s in sections for c in s.collections),
        total_files=sum(g.count for s in sections for g in s.files),
    )
