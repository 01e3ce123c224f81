"""Emails to data subjects: "your export is ready" and "your data was erased".

Each message goes to one address, the request's contact (`exporters.delivery`), and is
multipart/alternative (plain text first, then HTML) rendered from the jinja2 templates in
``compliance/templates/email``; HTML is autoescaped. Receipts speak in the manifest's
descriptions (`compliance.receipts.summarise`), never in table or column names.
Delivery goes through `compliance.mail.send` (SMTP or the outbox folder). Logs name the
kind of message only: never a recipient, a link or a receipt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from compliance.identities import IdentityType, parse_identity
from compliance.receipts import Facts, summarise

log = logging.getLogger("gdpr.notify")

TEMPLATES = Path(__file__).parent / "templates" / "email"


def send_export_ready(
    settings: Settings,
    recipient: str,
    *,
    url: str,
    expires_at: datetime,
    max_downloads: int,
    reference: str,
    now: datetime,
) -> None:
    """Email the download link of an export package to the request's contact."""
    context = {
        "url": url,
        "expires_at": expires_at,
        "max_downloads": max_downloads,
        "reference": reference,
    }
    subject = "Your personal data export is ready"
    message = compose(settings, recipient, subject, "export_ready", context, now)
    mail.send(settings, message)
    log.info("notify.export_ready.sent")


def send_erasure_receipt(
    settings: Settings,
    recipient: str,
    *,
    receipt: Mapping[str, Any],
    reference: str,
    now: datetime,
    facts: Facts | None = None,
) -> None:
    """Email a summary of an erasure to the request's contact: what was deleted, what
    was kept and why, in the words of the manifest (`facts`: descriptions per location)."""
    summary = summarise(receipt, facts)
    context = {"summary": summary, "reference": reference, "now": now}
    title = "Your personal data has been erased"
    if summary.held:
        title += ", except what a legal hold keeps for now"
    message = compose(settings, recipient, title, "erasure_done", context, now)
    mail.send(settings, message)
    log.info("notify.erasure_done.sent")


def compose(
    settings: Settings,
    recipient: str,
    subject: str,
    template: str,
    context: Mapping[str, Any],
    now: datetime,
) -> EmailMessage:
    """A multipart/alternative message to one address, from `<template>.txt` and `.html`.
    The address is parsed as an email identity: that validates it and refuses header
    injection (CR/LF)."""
    address = parse_identity(IdentityType.EMAIL, recipient).value
    # an internationalised address (jürgen@example.de) goes out as UTF-8 (SMTPUTF8), never
    # as an encoded word, which would make it a different, invalid address
    message = EmailMessage(policy=SMTPUTF8) if not address.isascii() else EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = address
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
    env = _environment()
    values = {**context, "subject": subject}
    message.set_content(env.get_template(f"{template}.txt").render(values))
    message.add_alternative(env.get_template(f"{template}.html").render(values), subtype="html")
    return message


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
