"""What the demo prints: live progress lines, the subject's emails, the receipt in words.

Pure functions over what `gdpr request show --json` returns and over `.eml` files, so the
demo (ops/demo.py) stays a readable story and these can be tested on their own.
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

LINK = re.compile(r"https?://\S+/d/[A-Za-z0-9_-]+")


# --- progress ------------------------------------------------------------------------------


def progress_line(view: Mapping[str, Any]) -> str:
    """One line for a request and its steps: `export 1a2b3c4d running: shop export running
    (rows=12) · crm export pending`, and what holds it up (retrying and why), if anything."""
    steps = " · ".join(_step(step) for step in view.get("steps", []))
    line = f"{view['kind']} {str(view['id'])[:8]} {view['status']}"
    if steps:
        line += f": {steps}"
    trouble = view.get("trouble") or (view.get("last_error") and f"error: {view['last_error']}")
    if trouble:
        line += f" ({trouble})"
    return line


def _step(step: Mapping[str, Any]) -> str:
    where = "" if step["source"] == "*" else f"{step['source']} "
    counts = _numbers(step.get("counts") or {})
    return f"{where}{step['action']} {step['status']}" + (f" ({counts})" if counts else "")


def _numbers(counts: Mapping[str, Any]) -> str:
    return " ".join(
        f"{key}={value}"
        for key, value in sorted(counts.items())
        if isinstance(value, int) and not isinstance(value, bool) and value
    )


def fit(line: str, width: int) -> str:
    """`line` cut to a terminal's width (a live line must not wrap)."""
    return line if len(line) <= width else line[: max(width - 1, 0)] + "…"


# --- the subject's emails ------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One message in the outbox folder."""

    path: Path
    to: str
    subject: str
    text: str

    @property
    def link(self) -> str | None:
        found = LINK.search(self.text)
        return found.group(0) if found else None


def read_outbox(outbox: Path) -> list[Mail]:
    """The messages in the outbox, oldest first."""
    found = []
    for path in sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        body = message.get_body(("plain",))
        text = body.get_content() if isinstance(body, EmailMessage) else ""
        found.append(Mail(path, str(message["To"]), str(message["Subject"]), text))
    return found


def mails_to(mails: Iterable[Mail], address: str) -> list[Mail]:
    return [m for m in mails if address.lower() in m.to.lower()]


# --- the receipt in words ------------------------------------------------------------------

_WORDS = (
    # (scope, disposition, count key, what happened, in words)
    ("subject", "delete", "deleted", "erased"),
    ("subject", "anonymize", "anonymized", "anonymised and kept (personal fields emptied)"),
    ("subject", "retain", "retained", "kept as they are"),
    ("shared", "retain", "retained", "kept because other people share them"),
    ("others", "detach", "detached", "other people's records unlinked from the subject"),
    ("reference", "detach", "detached", "kept records unlinked from erased ones"),
)


def receipt_in_words(receipt: Mapping[str, Any]) -> list[str]:
    """What an erasure did, one line per kind of outcome, with counts per place and the
    legal basis of anything kept. Names and counts only, as in the receipt itself."""
    places = [
        (source["source"], location)
        for source in receipt.get("sources", [])
        for location in source.get("locations", [])
    ]
    lines = []
    for scope, disposition, key, words in _WORDS:
        chosen = [
            (source, loc)
            for source, loc in places
            if loc.get("scope", "subject") == scope
            and loc.get("disposition") == disposition
            and loc.get(key)
        ]
        if chosen:
            total = sum(int(loc[key]) for _, loc in chosen)
            kept = disposition != "delete"  # a basis explains what is kept, not what went
            lines.append(f"{words}: {total} ({_listing(chosen, key, with_basis=kept)})")
    lines.extend(_held(receipt.get("held", [])))
    lines.extend(_exports(receipt.get("exports") or {}))
    if receipt.get("dry_run"):
        lines.append("a dry run: nothing was changed")
    elif receipt.get("verified"):
        lines.append("checked afterwards: nothing of the subject's is left")
    return lines or ["nothing of the subject's was found"]


def _listing(chosen: Sequence[tuple[str, Mapping[str, Any]]], key: str, *, with_basis: bool) -> str:
    parts = []
    for source, loc in chosen:
        part = f"{source}.{loc['location']} {loc[key]}"
        if with_basis and loc.get("legal_basis"):
            part += f", because of {loc['legal_basis']}"
        parts.append(part)
    return "; ".join(parts)


def _held(held: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"kept for now by legal hold {hold['hold']} on {entry['source']}"
        f" ({hold['legal_basis']}); erased when it ends"
        for entry in held
        for hold in entry.get("holds", [])
    ]


def _exports(exports: Mapping[str, Any]) -> list[str]:
    links, packages = int(exports.get("links_revoked", 0)), int(exports.get("packages_deleted", 0))
    if not links and not packages:
        return []
    return [f"earlier exports: {links} download link(s) revoked, {packages} package(s) deleted"]
