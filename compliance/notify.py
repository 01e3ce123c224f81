"""Emails to data subjects: "your export is ready" and "your data was erased".

Each message is multipart/alternative (plain text first, then HTML) rendered from the
jinja2 templates in ``compliance/templates/email``; HTML is autoescaped. Delivery goes
through `compliance.mail.send` (SMTP or the outbox folder). Logs name the kind of
message only: never a recipient, a link or a receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTPUTF8
from email.utils import format_datetime, make_msgid
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from compliance import mail
from compliance.config import Settings
from compliance.errors import ValidationError
from compliance.identities import IdentityType, parse_identity

log = logging.getLogger("gdpr.notify")

TEMPLATES = Path(__file__).parent / "templates" / "email"
COUNT_KEYS = ("deleted", "anonymized", "retained")
LABEL_KEYS = ("location", "table", "collection", "prefix", "pattern", "source", "name")


@dataclass(frozen=True)
class ReceiptLine:
    """What happened at one place: counts, and why anything was kept."""

    place: str
    deleted: int = 0
    anonymized: int = 0
    retained: int = 0
    legal_basis: str = ""


@dataclass(frozen=True)
class HeldLine:
    """A place a legal hold keeps for now, its basis and when the hold ends (if known)."""

    place: str
    legal_basis: str
    until: str | None = None  # ISO date


@dataclass(frozen=True)
class ReceiptSummary:
    lines: tuple[ReceiptLine, ...]
    verified: bool | None  # None: the receipt says nothing about verification
    held: tuple[HeldLine, ...] = ()  # kept by a legal hold, erased when it ends
    exports_removed: int = 0  # earlier exports' links revoked and packages deleted

    @property
    def retained(self) -> tuple[ReceiptLine, ...]:
        return tuple(line for line in self.lines if line.retained)

    def total(self, key: str) -> int:
        return sum(int(getattr(line, key)) for line in self.lines)


def send_export_ready(
    settings: Settings,
    recipients: Sequence[str],
    *,
    url: str,
    expires_at: datetime,
    max_downloads: int,
    now: datetime,
) -> None:
    """Email the download link of an export package."""
    context = {"url": url, "expires_at": expires_at, "max_downloads": max_downloads}
    message = compose(
        settings, recipients, "Your personal data export is ready", "export_ready", context, now
    )
    mail.send(settings, message)
    log.info("notify.export_ready.sent", extra={"recipients": len(message["To"].split(","))})


def send_erasure_receipt(
    settings: Settings,
    recipients: Sequence[str],
    *,
    receipt: Mapping[str, Any],
    reference: str,
    now: datetime,
) -> None:
    """Email a summary of an erasure: what was deleted, what was retained and why."""
    summary = summarise_receipt(receipt)
    context = {"summary": summary, "reference": reference, "now": now}
    title = "Your personal data has been erased"
    if summary.held:
        title += ", except what a legal hold keeps for now"
    message = compose(settings, recipients, title, "erasure_done", context, now)
    mail.send(settings, message)
    log.info("notify.erasure_done.sent", extra={"recipients": len(message["To"].split(","))})


def compose(
    settings: Settings,
    recipients: Sequence[str],
    subject: str,
    template: str,
    context: Mapping[str, Any],
    now: datetime,
) -> EmailMessage:
    """A multipart/alternative message rendered from `<template>.txt` and `.html`."""
    addresses = _addresses(recipients)
    international = not all(a.isascii() for a in addresses)
    # an internationalised address (jürgen@example.de) goes out as UTF-8 (SMTPUTF8), never
    # as an encoded word, which would make it a different, invalid address
    message = EmailMessage(policy=SMTPUTF8) if international else EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = ", ".join(addresses)
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
    env = _environment()
    values = {**context, "subject": subject}
    message.set_content(env.get_template(f"{template}.txt").render(values))
    message.add_alternative(env.get_template(f"{template}.html").render(values), subtype="html")
    return message


def _addresses(recipients: Sequence[str]) -> list[str]:
    if not recipients:
        raise ValidationError("a message needs at least one recipient")
    # Parsing validates and normalises; it also refuses header injection (CR/LF).
    return sorted({parse_identity(IdentityType.EMAIL, r).value for r in recipients})


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    return env


def _when(value: datetime) -> str:
    return value.strftime("%d %B %Y, %H:%M %Z").lstrip("0")


# --- receipts ----------------------------------------------------------------------------


def summarise_receipt(receipt: Mapping[str, Any]) -> ReceiptSummary:
    """Flatten an erasure receipt into per-place lines, whatever its nesting.

    A place is any mapping holding ``deleted``/``anonymized``/``retained`` counts; when a
    mapping and its children both hold counts, the children (more detail) win.
    """
    return ReceiptSummary(
        tuple(_lines(receipt, ())), _verified(receipt), _held(receipt), _exports(receipt)
    )


def _exports(receipt: Mapping[str, Any]) -> int:
    """How many export links and packages the erasure removed (``exports`` key)."""
    found = receipt.get("exports")
    if not isinstance(found, Mapping):
        return 0
    return _count(found, "links_revoked") + _count(found, "packages_deleted")


def _held(receipt: Mapping[str, Any]) -> tuple[HeldLine, ...]:
    found = []
    for entry in receipt.get("held", []):
        for hold in entry.get("holds", []):
            location = hold.get("location") or "*"
            place = entry["source"] if location == "*" else f"{entry['source']} / {location}"
            until = hold.get("until")
            found.append(HeldLine(place, str(hold.get("legal_basis", "")), until and until[:10]))
    return tuple(found)


def _lines(node: Any, path: tuple[str, ...]) -> Iterator[ReceiptLine]:
    children: list[ReceiptLine] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in ("held", "exports"):
                continue  # summarised on their own (`_held`, `_exports`)
            if isinstance(value, Mapping | list):
                children.extend(_lines(value, (*path, _label(value, str(key)))))
    elif isinstance(node, list):
        for item in node:
            children.extend(_lines(item, (*path, _label(item, ""))))
    if children:
        yield from children
    elif isinstance(node, Mapping) and _subjects(node) and any(k in node for k in COUNT_KEYS):
        yield ReceiptLine(
            place=" / ".join(p for p in _dedupe(path) if p) or "all data",
            deleted=_count(node, "deleted"),
            anonymized=_count(node, "anonymized"),
            retained=_count(node, "retained"),
            legal_basis=str(node.get("legal_basis") or ""),
        )


def _subjects(node: Mapping[str, Any]) -> bool:
    """A place counting the subject's own rows (not shared rows kept for others, other
    people's rows, or references: a plan's `scope`)."""
    return bool(node.get("scope", "subject") == "subject")


def _label(node: Any, fallback: str) -> str:
    if isinstance(node, Mapping):
        for key in LABEL_KEYS:
            if isinstance(node.get(key), str):
                return str(node[key])
    return "" if fallback in {"sources", "locations", "tables", "steps", "results"} else fallback


def _dedupe(path: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in path:
        if part and (not out or out[-1] != part):
            out.append(part)
    return out


def _count(node: Mapping[str, Any], key: str) -> int:
    value = node.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _verified(receipt: Mapping[str, Any]) -> bool | None:
    value = receipt.get("verified", receipt.get("verification"))
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        if isinstance(value.get("ok"), bool):
            return bool(value["ok"])
        if "residue" in value:
            return not value["residue"]
    return None
