"""Where alerts go: email to `alert_email_to` (through `compliance.mail`: SMTP or the
outbox folder) and a Slack-compatible incoming webhook (`alert_webhook_url`: an HTTP POST
of ``{"text": ...}``). A channel that fails raises `ChannelUnavailableError`, whose message
names the channel and the reason, never the webhook's URL (it holds its secret) nor a
recipient.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Protocol
from urllib.error import HTTPError, URLError

from compliance import mail
from compliance.config import Settings
from compliance.defaults import ALERT_WEBHOOK_TIMEOUT_SECONDS
from compliance.errors import ChannelUnavailableError, ComplianceError, ConfigError
from compliance.identities import IdentityType, parse_identity

EMAIL = "email"
WEBHOOK = "webhook"
SUBJECT_PREFIX = "[gdpr] "
USER_AGENT = "gdpr-alerts/1"


class Channel(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, title: str, body: str, now: datetime) -> None:
        """Deliver one alert, or raise `ChannelUnavailableError`."""
        ...


@dataclass(frozen=True)
class EmailChannel:
    settings: Settings
    recipients: tuple[str, ...]
    name: str = EMAIL

    def send(self, title: str, body: str, now: datetime) -> None:
        message = EmailMessage()
        message["From"] = self.settings.mail_from
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = SUBJECT_PREFIX + title
        message["Date"] = format_datetime(now)
        domain = self.settings.mail_from.rpartition("@")[2] or None
        message["Message-ID"] = make_msgid(domain=domain)
        message.set_content(f"{title}\n\n{body}\n")
        try:
            mail.send(self.settings, message)
        except ComplianceError as exc:
            raise ChannelUnavailableError(f"email: {exc}") from exc


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: object, **__: object) -> None:
        return None  # a redirect is an answer we do not follow: the POST fails


@dataclass(frozen=True)
class WebhookChannel:
    url: str
    timeout: float = ALERT_WEBHOOK_TIMEOUT_SECONDS
    name: str = WEBHOOK

    def send(self, title: str, body: str, now: datetime) -> None:
        payload = json.dumps({"text": f"*{title}*\n{body}"}).encode()
        request = urllib.request.Request(  # noqa: S310  (the setting allows http(s) only)
            self.url,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        opener = urllib.request.build_opener(_NoRedirects)
        try:
            with opener.open(request, timeout=self.timeout) as response:
                response.read(4096)
        except HTTPError as exc:
            raise ChannelUnavailableError(f"webhook: answered HTTP {exc.code}") from exc
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ChannelUnavailableError(
                f"webhook: not reached ({type(reason).__name__})"
            ) from exc


def configured(settings: Settings) -> list[Channel]:
    """The channels the settings name (none: alerts are evaluated but go nowhere)."""
    found: list[Channel] = []
    recipients = recipients_of(settings.alert_email_to)
    if recipients:
        found.append(EmailChannel(settings, recipients))
    if settings.alert_webhook_url:
        found.append(WebhookChannel(settings.alert_webhook_url))
    return found


def recipients_of(text: str) -> tuple[str, ...]:
    """The addresses of `alert_email_to`, validated; a bad one is a `ConfigError`."""
    found = []
    for position, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            found.append(parse_identity(IdentityType.EMAIL, part).value)
        except ComplianceError:
            raise ConfigError(
                f"setting 'alert_email_to': address {position + 1} is not a valid email"
                " address; list addresses separated by commas"
            ) from None
    return tuple(found)


def names(channels: Sequence[Channel]) -> list[str]:
    return [c.name for c in channels]
