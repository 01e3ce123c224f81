"""The human-readable index of a package: what we hold, from where, why, and for how long.

It is what a data subject opens first, so it shows the data itself: each table's first
rows (`exporters.preview`), under the manifest's description of the table (or its name
made readable), with the Art. 15 facts the manifest knows and nothing for those it does
not. The package streams and the index is written last, so `IndexBuilder` keeps counts
and a bounded preview per table, never the rows; the page streams out in pieces.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from compliance.sources.base import Art15, FileItem, RowsItem
from exporters.preview import Budget, Preview, cell, human_size, humanise

TEMPLATES = Path(__file__).resolve().parent.parent / "compliance" / "templates"
SHARED_SUFFIX = ".shared"  # the SQL connector's name for a table's shared rows
FILES_TITLE = "Files you gave us or we made about you"
NOBODY = "Nobody outside our organisation"
HEADING_CHARS = 60


@dataclass(frozen=True)
class Collection:
    """One table/collection in the package, its Art. 15 facts and its first rows."""

    name: str
    rows: int
    json_path: str
    csv_path: str
    meta: Art15
    shared: bool = False  # rows shared with other people, e.g. an address two customers use
    preview: Preview = field(default_factory=Preview)

    @property
    def title(self) -> str:
        """The manifest's description, else the collection's name made readable."""
        if self.meta.description:
            return self.meta.description
        name = self.name.removesuffix(SHARED_SUFFIX) if self.shared else self.name
        return humanise(name)

    @property
    def shown(self) -> int:
        return len(self.preview.rows)

    @property
    def capped(self) -> bool:
        """The page shows fewer rows than the files hold."""
        return self.shown < self.rows


@dataclass(frozen=True)
class FileGroup:
    """The files of one source that share the same Art. 15 facts."""

    folder: str
    count: int
    size: int
    meta: Art15

    @property
    def title(self) -> str:
        return self.meta.description or FILES_TITLE


@dataclass(frozen=True)
class SourceSection:
    source: str
    collections: tuple[Collection, ...]
    files: tuple[FileGroup, ...]


class IndexBuilder:
    """Collects per-collection counts and previews while the package streams; the
    previews of the whole page together stay within `budget`."""

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget or Budget()
        self._collections: dict[str, list[Collection]] = {}
        self._files: dict[str, dict[Art15, tuple[int, int]]] = {}

    def add_rows(
        self,
        item: RowsItem,
        rows: int,
        json_path: str,
        csv_path: str,
        preview: Preview,
    ) -> None:
        entry = Collection(
            item.collection, rows, json_path, csv_path, item.meta, item.shared, preview
        )
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


def facts(meta: Art15) -> tuple[tuple[str, str], ...]:
    """The Art. 15 facts the manifest knows, as (label, text) in reading order; a fact
    it does not know is left out rather than shown as "not specified"."""
    recipients = None if meta.recipients is None else ", ".join(meta.recipients) or NOBODY
    found = (
        ("Why we hold it", meta.purpose),
        ("Legal basis", meta.legal_basis),
        ("Who receives it", recipients),
        ("How long we keep it", meta.retention),
        ("Where it came from", meta.origin),
    )
    return tuple((label, text) for label, text in found if text)


def heading(column: str) -> str:
    """A column's name as a table heading: ``created_at`` -> "Created at"."""
    return cell(humanise(column), HEADING_CHARS)[0]


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
    env.filters["facts"] = facts
    env.filters["heading"] = heading
    return env


def render_index(
    sections: list[SourceSection],
    *,
    request_id: str,
    generated_at: datetime,
    subject_label: str,
    controller: str,
) -> Iterator[str]:
    """The page, in pieces (it is never held whole)."""
    template = _environment().get_template("export/index.html")
    return template.generate(
        sections=sections,
        request_id=request_id,
        generated_at=f"{generated_at.day} {generated_at:%B %Y, %H:%M %Z}".strip(),
        subject_label=subject_label,
        controller=controller,
        total_rows=sum(c.rows for s in sections for c in s.collections),
        total_files=sum(g.count for s in sections for g in s.files),
    )
