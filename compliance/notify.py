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
import secrets
from collections.abc import Mapping
from datetime import datetime
from email.charset import QP, Charset
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
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
_BODY_CHARSET = Charset("utf-8")
_BODY_CHARSET.body_encoding = QP  # readable in the outbox, safe on any line length


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
) -> Message:
    """A multipart/alternative message to one address, from `<template>.txt` and `.html`.
    The address is parsed as an email identity: that validates it and refuses header
    injection (CR/LF)."""
    address = parse_identity(IdentityType.EMAIL, recipient).value
    env = _environment()
    values = {**context, "subject": subject}
    text = env.get_template(f"{template}.txt").render(values)
    html = env.get_template(f"{template}.html").render(values)
    headers = {
        "From": settings.mail_from,
        "To": address,
        "Subject": subject,
        "Date": format_datetime(now),
        "Message-ID": make_msgid(domain=settings.mail_from.rpartition("@")[2] or None),
    }
    if all(_plain(value) for value in headers.values()):
        return _ascii_message(headers, text, html)
    return _international_message(headers, text, html)


def _plain(value: str) -> bool:
    return value.isascii() and "\r" not in value and "\n" not in value


def _ascii_message(headers: Mapping[str, str], text: str, html: str) -> Message:
    """The message built with `email.mime`: its headers are plain ASCII lines, so none
    needs parsing (the same message as `_international_message`, in a fraction of the
    time; every subject's mail pays it)."""
    # "=_" never occurs in quoted-printable text, so the boundary needs no search of the
    # bodies (which the generator would do with a regular expression made per message)
    message = MIMEMultipart("alternative", boundary=f"=_{secrets.token_hex(16)}")
    for name, value in headers.items():
        message[name] = value
    for body, subtype in ((text, "plain"), (html, "html")):
        part = MIMENonMultipart("text", subtype)
        del part["MIME-Version"]  # once, on the message
        part.set_payload(body, _BODY_CHARSET)
        message.attach(part)
    return message


def _international_message(headers: Mapping[str, str], text: str, html: str) -> Message:
    """The message for an internationalised address (jürgen@example.de), which goes out
    as UTF-8 (SMTPUTF8), never as an encoded word: that would make it a different,
    invalid address. Header values are parsed, so CR/LF is refused."""
    message = EmailMessage(policy=SMTPUTF8)
    for name, value in headers.items():
        message[name] = value
    message.set_content(text)
    message.add_alternative(html, subtype="html")
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
