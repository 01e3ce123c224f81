from __future__ import annotations

import email
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

from compliance import notify
from compliance.config import Settings
from compliance.errors import ConfigError, MailUnavailableError, TerminalError, ValidationError
from compliance.sources.base import Art15

NOW = datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
EXPIRES = datetime(2025, 3, 11, 10, 30, tzinfo=UTC)
URL = "https://privacy.example.com/d/" + "A" * 43
RECEIPT: dict[str, Any] = {
    "request_id": "r-1",
    "sources": [
        {
            "source": "app",
            "locations": [
                {"location": "users", "disposition": "delete", "deleted": 1},
                {"location": "orders", "disposition": "anonymize", "anonymized": 4},
                {
                    "location": "invoices",
                    "disposition": "retain",
                    "retained": 2,
                    "legal_basis": "tax law: keep invoices for 10 years",
                },
                {"location": "invoices.user_id", "disposition": "detach", "detached": 2},
            ],
        },
        {"source": "avatars", "deleted": 3},
    ],
    "verification": {"ok": True, "residue": []},
}
FACTS = {"app": {"users": Art15(description="Your account"), "orders": Art15(retention="6 years")}}


def _recipient() -> str:
    return f"subject-{uuid.uuid4().hex[:10]}@example.com"


def _wait_for(maildir: Path, needle: str, timeout: float = 10.0) -> EmailMessage:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in maildir.glob("*.eml"):
            data = path.read_bytes()
            if needle.encode() in data:
                message = email.message_from_bytes(data, policy=default_policy)
                assert isinstance(message, EmailMessage)
                return message
        time.sleep(0.05)
    raise AssertionError("the message did not arrive at the SMTP server")


def _parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


@pytest.mark.smtp
def test_export_ready_mail_reaches_the_smtp_server_with_text_and_html(
    smtp_server: tuple[str, int, Path], tmp_path: Path
) -> None:
    host, port, maildir = smtp_server
    settings = Settings(home=tmp_path, mail_url=f"smtp://{host}:{port}")
    to = _recipient()
    notify.send_export_ready(
        settings, to, url=URL, expires_at=EXPIRES, max_downloads=3, reference="R-7", now=NOW
    )
    message = _wait_for(maildir, to)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Your personal data export is ready"
    assert message["From"] == settings.mail_from
    text, html = _parts(message)
    assert URL in text and f'href="{URL}"' in html
    assert "11 March 2025, 10:30 UTC" in text
    assert "at most 3 downloads." in text
    for body in (text, html):
        assert "R-7" in body  # the reference to quote
        assert "expired" in body and "new one" in body  # what to do when it expired


def test_the_outbox_folder_gets_one_complete_eml_per_message(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    settings = Settings(home=tmp_path, mail_url=outbox.as_uri())
    to = _recipient()
    notify.send_export_ready(
        settings, to, url=URL, expires_at=EXPIRES, max_downloads=1, reference="R", now=NOW
    )
    (path,) = outbox.iterdir()
    assert path.suffix == ".eml"
    message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
    assert message["To"] == to
    assert "at most 1 download." in _parts(message)[0]  # type: ignore[arg-type]


def test_the_embedded_default_writes_to_the_outbox_under_home(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / ".gdpr")
    notify.send_export_ready(
        settings, _recipient(), url=URL, expires_at=EXPIRES, max_downloads=1, reference="R", now=NOW
    )
    assert len(list((tmp_path / ".gdpr" / "outbox").glob("*.eml"))) == 1


@pytest.mark.smtp
def test_erasure_receipt_says_what_was_deleted_and_what_was_kept_and_why(
    smtp_server: tuple[str, int, Path], tmp_path: Path
) -> None:
    host, port, maildir = smtp_server
    settings = Settings(home=tmp_path, mail_url=f"smtp://{host}:{port}")
    to = _recipient()
    notify.send_erasure_receipt(
        settings, to, receipt=RECEIPT, reference="REF-42", now=NOW, facts=FACTS
    )
    message = _wait_for(maildir, to)
    text, html = _parts(message)
    for body in (text, html):
        assert "REF-42" in body
        assert "tax law: keep invoices for 10 years" in body
        assert "nothing else about you is left" in body
    assert "- Your account: 1 deleted" in text  # the manifest's description
    assert "- Orders: your details removed, 4 kept for 6 years" in text  # a humanised name
    assert "- Invoices: 2 kept (tax law: keep invoices for 10 years)" in text
    assert "- Your data in our avatars records: 3 deleted" in text
    assert "In total: 4 records deleted, 4 kept with your details removed, 2 kept" in text
    for body in (text, html):
        assert "user_id" not in body and "invoices." not in body  # no column, no reference


def test_receipt_values_are_escaped_in_the_html_part(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, mail_url=(tmp_path / "out").as_uri())
    receipt = {"sources": [{"source": "<script>x</script>", "deleted": 1}]}
    notify.send_erasure_receipt(settings, _recipient(), receipt=receipt, reference="R", now=NOW)
    (path,) = (tmp_path / "out").iterdir()
    message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
    _, html = _parts(message)  # type: ignore[arg-type]
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_recipient_with_a_header_injection_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, mail_url=(tmp_path / "out").as_uri())
    with pytest.raises(ValidationError):
        notify.send_export_ready(
            settings,
            "a@example.com\r\nBcc: evil@example.com",
            url=URL,
            expires_at=EXPIRES,
            max_downloads=1,
            reference="R",
            now=NOW,
        )
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_smtp_server_is_retryable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, mail_url=f"smtp://127.0.0.1:{_free_port()}")
    with pytest.raises(MailUnavailableError, match="cannot deliver mail"):
        notify.send_export_ready(
            settings,
            _recipient(),
            url=URL,
            expires_at=EXPIRES,
            max_downloads=1,
            reference="R",
            now=NOW,
        )


@pytest.mark.smtp
def test_starttls_against_a_server_without_it_is_a_configuration_error(
    smtp_server: tuple[str, int, Path], tmp_path: Path
) -> None:
    host, port, _ = smtp_server
    settings = Settings(home=tmp_path, mail_url=f"smtp://{host}:{port}", mail_starttls=True)
    with pytest.raises(ConfigError, match="STARTTLS"):
        notify.send_export_ready(
            settings,
            _recipient(),
            url=URL,
            expires_at=EXPIRES,
            max_downloads=1,
            reference="R",
            now=NOW,
        )


class _Rejecting:
    def __init__(self, reply: str) -> None:
        self.reply = reply

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        return self.reply


@pytest.fixture
def rejecting_server() -> Iterator[Any]:
    from aiosmtpd.controller import Controller

    started: list[Any] = []

    def start(reply: str) -> int:
        port = _free_port()
        controller = Controller(_Rejecting(reply), hostname="127.0.0.1", port=port)
        controller.start()
        started.append(controller)
        return port

    yield start
    for controller in started:
        controller.stop()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("550 5.1.1 no such user", TerminalError),
        ("451 4.3.0 try again later", MailUnavailableError),
    ],
)
def test_smtp_rejections_are_terminal_when_permanent_and_retryable_when_temporary(
    rejecting_server: Any, tmp_path: Path, reply: str, error: type[Exception]
) -> None:
    port = rejecting_server(reply)
    settings = Settings(home=tmp_path, mail_url=f"smtp://127.0.0.1:{port}")
    with pytest.raises(error) as caught:
        notify.send_export_ready(
            settings,
            _recipient(),
            url=URL,
            expires_at=EXPIRES,
            max_downloads=1,
            reference="R",
            now=NOW,
        )
    assert reply[:3] in str(caught.value)
    if error is TerminalError:
        assert not isinstance(caught.value, MailUnavailableError)


def test_logs_never_name_the_recipient_or_the_link(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path, mail_url=(tmp_path / "out").as_uri())
    to = _recipient()
    with caplog.at_level(logging.DEBUG, logger="gdpr"):
        notify.send_export_ready(
            settings, to, url=URL, expires_at=EXPIRES, max_downloads=1, reference="R", now=NOW
        )
    assert caplog.records
    for record in caplog.records:
        rendered = record.getMessage() + repr(record.__dict__)
        assert to not in rendered and URL not in rendered


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("454 4.7.0 Temporary authentication failure", MailUnavailableError),
        ("535 5.7.8 Authentication credentials invalid", ConfigError),
    ],
)
def test_a_temporary_login_failure_is_retried_and_a_wrong_password_is_not(
    tmp_path: Path, reply: str, error: type[Exception]
) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    def authenticator(*_: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, message=reply)

    port = _free_port()
    controller = Controller(
        _Rejecting("250 OK"),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        settings = Settings(
            home=tmp_path,
            mail_url=f"smtp://127.0.0.1:{port}",
            mail_username="svc",
            mail_password="not-this-one",
        )
        with pytest.raises(error) as caught:
            notify.send_export_ready(
                settings,
                _recipient(),
                url=URL,
                expires_at=EXPIRES,
                max_downloads=1,
                reference="R",
                now=NOW,
            )
    finally:
        controller.stop()
    assert reply[:3] in str(caught.value)
    assert "not-this-one" not in str(caught.value)


def test_an_internationalised_address_goes_out_as_utf8_not_as_an_encoded_word(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox"
    settings = Settings(home=tmp_path, mail_url=outbox.as_uri())
    notify.send_erasure_receipt(settings, "Jürgen@Example.DE", receipt={}, reference="R-1", now=NOW)
    (path,) = outbox.iterdir()
    raw = path.read_bytes()
    assert "To: jürgen@example.de".encode() in raw
    assert b"=?utf-8?" not in raw.split(b"\r\n\r\n", 1)[0]
