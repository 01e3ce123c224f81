"""Printing: aligned tables for people, JSON for scripts, one-line errors on stderr, and
a live status line for long waits (redrawn on a terminal, plain lines otherwise)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import click

_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")

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
    header = "  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))
    click.echo(header.rstrip())
    for row_cells, row in zip(cells, rows, strict=True):
        parts = []
        for col, text, width in zip(columns, row_cells, widths, strict=True):
            padded = text.ljust(width)
            parts.append(status(padded) if col == "status" and row.get(col) else padded)
        click.echo("  ".join(parts).rstrip())


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """`key  value` lines, aligned; a value of several lines continues under the first."""
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        shown = status(str(value)) if key == "status" else _cell(value)
        first, *more = shown.splitlines() or [""]
        click.echo(f"{key.ljust(width)}  {first}")
        for line in more:
            click.echo(f"{' ' * width}  {line}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) and _ISO_TIME.match(value):
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


def is_tty() -> bool:
    """Whether stdout is a terminal (progress is redrawn there, printed as lines elsewhere)."""
    return sys.stdout.isatty()


class LiveLine:
    """One line of progress. On a terminal it is redrawn in place (cut to the terminal's
    width); elsewhere a line is printed when the text changed, at most once every
    `every` seconds, and the last text is printed on `close` if it was not yet."""

    def __init__(
        self,
        *,
        tty: bool,
        every: float = 5.0,
        file: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: Callable[[], int] = lambda: shutil.get_terminal_size().columns,
    ) -> None:
        self.tty = tty
        self.every = every
        self.file = file
        self.clock = clock
        self.width = width
        self.started = clock()
        self._printed: str | None = None  # last text shown
        self._pending: str | None = None  # newer text not shown yet (plain lines)
        self._last_at: float | None = None

    def show(self, text: str) -> None:
        elapsed = f"[{self.clock() - self.started:4.0f} s] "
        if self.tty:
            line = (elapsed + text)[: max(10, self.width() - 1)]
            click.echo(f"\r\x1b[K{line}", nl=False, file=self.file)
            self._printed = text
            return
        if text == self._printed:
            self._pending = None
            return
        now = self.clock()
        if self._last_at is not None and now - self._last_at < self.every:
            self._pending = text
            return
        click.echo(elapsed + text, file=self.file)
        self._printed, self._pending, self._last_at = text, None, now

    def close(self) -> None:
        """End the line (terminal) or print the last text not printed yet."""
        if self.tty:
            if self._printed is not None:
                click.echo("", file=self.file)
            return
        if self._pending is not None:
            elapsed = f"[{self.clock() - self.started:4.0f} s] "
            click.echo(elapsed + self._pending, file=self.file)
            self._printed, self._pending = self._pending, None
