"""Sending email: SMTP (STARTTLS or implicit TLS) in production, an outbox folder by default.

`settings.mail` chooses the transport: ``smtp://host:port`` (with `mail_starttls`),
``smtps://host:port`` (implicit TLS) or ``file:///path/outbox`` (each message written
atomically as a ``.eml`` file). smtplib errors are translated here: temporary failures
and unreachable servers are `MailUnavailableError` (retry), permanent 5xx rejections are
`TerminalError`. Nothing here logs a recipient, a subject line or a body.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import uuid
from email.message import Message
from pathlib import Path
from urllib.parse import unquote, urlsplit

from compliance.config import Settings
from compliance.errors import ConfigError, MailRefusedError, MailUnavailableError, TerminalError

log = logging.getLogger("gdpr.mail")

SMTP_TIMEOUT_SECONDS = 30
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


def send(settings: Settings, message: Message) -> None:
    """Deliver one message by the configured transport."""
    parts = urlsplit(settings.mail)
    if parts.scheme == "file":
        path = write_eml(Path(unquote(parts.path)), message)
        log.info("mail.written", extra={"transport": "file", "file": path.name})
        return
    if parts.scheme not in DEFAULT_PORTS:
        raise ConfigError("setting 'mail_url' must be smtp://, smtps:// or file:///")
    host = parts.hostname or "localhost"
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    try:
        _send_smtp(settings, parts.scheme, host, port, message)
    except smtplib.SMTPNotSupportedError as exc:
        if "SMTPUTF8" in str(exc):
            raise MailRefusedError(
                "the SMTP server does not accept internationalised addresses (SMTPUTF8);"
                " enable SMTPUTF8 on it, or reach the subject another way"
            ) from exc
        raise ConfigError(
            "the SMTP server does not offer STARTTLS; use smtps:// or unset mail_starttls"
        ) from exc
    except smtplib.SMTPAuthenticationError as exc:
        if 400 <= exc.smtp_code < 500:  # e.g. 454: authentication temporarily unavailable
            raise MailUnavailableError(
                f"the SMTP server cannot check the login right now ({exc.smtp_code})"
            ) from exc
        raise ConfigError(
            f"the SMTP server rejected the login ({exc.smtp_code}); check mail_username/password"
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise _refused(min(code for code, _ in exc.recipients.values())) from exc
    except smtplib.SMTPResponseException as exc:
        raise _refused(exc.smtp_code) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise MailUnavailableError(
            f"cannot deliver mail via {parts.scheme}://{host}:{port}: {type(exc).__name__}"
        ) from exc
    log.info("mail.sent", extra={"transport": parts.scheme})


def _send_smtp(settings: Settings, scheme: str, host: str, port: int, message: Message) -> None:
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if scheme == "smtps":
        client = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT_SECONDS, context=context)
    else:
        client = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT_SECONDS)
    with client:
        if scheme == "smtp" and settings.mail_starttls:
            client.starttls(context=context)
        if settings.mail_username:
            client.login(settings.mail_username, settings.mail_password)
        client.send_message(message)


def _refused(code: int) -> Exception:
    if 500 <= code < 600:
        return TerminalError(
            f"the SMTP server permanently rejected the message ({code}); check the address "
            "and the sender settings"
        )
    return MailUnavailableError(f"the SMTP server refused the message for now ({code})")


def write_eml(outbox: Path, message: Message) -> Path:
    """Write a message into `outbox` atomically (temp file, then rename); return its path."""
    try:
        outbox.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.eml"
        staging = outbox / f".{name}.tmp"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(message.as_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        final = outbox / name
        os.replace(staging, final)
    except OSError as exc:
        raise MailUnavailableError(
            f"cannot write to the outbox folder {outbox}: {exc.strerror}"
        ) from exc
    return final
