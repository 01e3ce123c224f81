"""Printing: aligned tables for people, JSON for scripts, one-line errors on stderr."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

STATUS_COLOURS = {
    "completed": "green",
    "failed": "red",
    "rejected": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "blue",
    "awaiting_approval": "magenta",
    "on_hold": "yellow",
}


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def one_line(message: str) -> str:
    """`message` on one line (a library's text quoted inside it may span several)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def status(text: str) -> str:
    """A status word, coloured (click strips colours when stdout is not a terminal)."""
    return click.style(text, fg=STATUS_COLOURS.get(text))


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("Nothing to show.")
        return
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    click.echo("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True)))
    for row_cells, row in zip(cells, rows, strict=True):
        parts = []
        for col, text, width in zip(columns, row_cells, widths, strict=True):
            padded = text.ljust(width)
            parts.append(status(padded) if col == "status" and row.get(col) else padded)
        click.echo("  ".join(parts).rstrip())


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        shown = status(str(value)) if key == "status" else _cell(value)
        click.echo(f"{key.ljust(width)}  {shown}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) and "T" in value and value[:4].isdigit():
        return value[:16].replace("T", " ")  # ISO timestamp, minutes are enough
    return str(value)


def summarise(counts: Mapping[str, Any] | None) -> str:
    """`deleted=16 anonymized=7` from a step's counts: the numbers, not the nested detail."""
    parts = []
    for key, value in sorted((counts or {}).items()):
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            parts.append(f"{key}={value}")
        elif isinstance(value, Mapping) and all(isinstance(v, int) for v in value.values()):
            parts.append(f"{key}={sum(value.values())}")
    return " ".join(parts) or "-"
