"""`gdpr doctor`: is every part this installation needs there and answering?

Each check is a named probe: it returns what it saw in a few words, or raises. A probe
never writes (the storage probe asks for an object that does not exist, the mail probe
says NOOP and leaves, the database probes only read). Findings are one line each; a
failure's line says what is wrong and how to fix it, never a password.

Warnings do not fail the run: a PostgreSQL connection (the control database's, each SQL
source's) to another host that is not verified TLS (`sslmode=verify-full`, in the URL or
in the TLS settings beside it), a development keyring beside a PostgreSQL control
database.
"""

from __future__ import annotations

import ipaddress
import os
import re
import smtplib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from compliance.config import Settings, mask_password
from compliance.db import Database, alembic_config, current_revision, unavailable
from compliance.keyring import Keyring
from compliance.mail import DEFAULT_PORTS
from compliance.pools import Tls, effective_tls

TIMEOUT_SECONDS = 10.0
VERIFIED_TLS = "verify-full"
_USERINFO = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")  # user:password@ in a URL


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, how it went, what was seen."""

    check: str
    status: Status
    detail: str

    def line(self, width: int) -> str:
        return f"{self.status:<4}  {self.check:<{width}}  {self.detail}"


Probe = Callable[[], str]


@dataclass(frozen=True)
class Check:
    name: str
    probe: Probe


def run(checks: Iterable[Check]) -> list[Finding]:
    """Run each probe once; a probe that raises is a failure with the error's one line."""
    findings = []
    for check in checks:
        try:
            findings.append(Finding(check.name, Status.OK, check.probe()))
        except Exception as exc:  # every failure is a finding, whatever its kind
            findings.append(Finding(check.name, Status.FAIL, _reason(exc)))
    return findings


def failed(findings: Sequence[Finding]) -> bool:
    return any(f.status == Status.FAIL for f in findings)


def _reason(exc: Exception) -> str:
    """The error's message on one line, any password in a URL in it masked."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return _USERINFO.sub("***@", message)


# --- probes ---------------------------------------------------------------------------------


def control_database(settings: Settings) -> str:
    """The control database answers and its schema is at the code's migration head."""
    from alembic.script import ScriptDirectory

    db = Database.connect(settings)
    try:
        try:
            with db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise unavailable(exc) from exc
        have = current_revision(db.engine)
        head = ScriptDirectory.from_config(alembic_config(db.engine)).get_current_head()
    finally:
        db.dispose()
    where = mask_password(settings.control_url)
    if have is None and settings.embedded:
        return f"{where} (created and migrated on first use)"
    if have != head:
        raise RuntimeError(
            f"{where}: schema at {have or 'nothing'}, this release needs {head};"
            " run `gdpr db upgrade`"
        )
    return f"{where} (schema {head})"


def broker(settings: Settings) -> str:
    """The Celery broker accepts a connection."""
    from kombu import Connection

    url = settings.broker
    with Connection(url, connect_timeout=TIMEOUT_SECONDS) as conn:
        conn.ensure_connection(max_retries=1, timeout=int(TIMEOUT_SECONDS))
    return mask_password(url)


def mail(settings: Settings) -> str:
    """The outbox folder is writable, or the SMTP server greets, logs in and says NOOP."""
    parts = urlsplit(settings.mail)
    if parts.scheme == "file":
        return _outbox(Path(unquote(parts.path)))
    if parts.scheme not in DEFAULT_PORTS:
        raise RuntimeError("mail_url must be smtp://, smtps:// or file:///; fix GDPR_MAIL_URL")
    host, port = parts.hostname or "localhost", parts.port or DEFAULT_PORTS[parts.scheme]
    smtp_class = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    try:
        with smtp_class(host, port, timeout=TIMEOUT_SECONDS) as server:
            server.ehlo()
            if settings.mail_starttls and parts.scheme == "smtp":
                server.starttls()
                server.ehlo()
            if settings.mail_username:
                server.login(settings.mail_username, settings.mail_password)
            server.noop()
    except (smtplib.SMTPException, OSError) as exc:
        raise RuntimeError(
            f"SMTP at {parts.scheme}://{host}:{port} does not answer ({type(exc).__name__});"
            " check GDPR_MAIL_URL and the server"
        ) from exc
    return f"{parts.scheme}://{host}:{port} answers"


def _outbox(folder: Path) -> str:
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not _writable(existing):
        raise RuntimeError(f"outbox folder {folder} cannot be written; fix GDPR_MAIL_URL")
    return f"outbox folder {folder} (no SMTP: mail is written as .eml files)"


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def keyring(load: Callable[[], Keyring]) -> str:
    ring = load()
    kind = "development keyring" if ring.development else "keyring"
    return f"{kind}: {len(ring.keys)} key(s), newest {ring.newest_id!r}"


# --- warnings -------------------------------------------------------------------------------


CONTROL_TLS_FIX = (
    f"set GDPR_DB_SSLMODE={VERIFIED_TLS} and GDPR_DB_SSLROOTCERT=<CA file>"
    f" (or ?sslmode={VERIFIED_TLS}&sslrootcert=<CA file> in its URL)"
)
SOURCE_TLS_FIX = (
    f'set sslmode = "{VERIFIED_TLS}" and sslrootcert = "<CA file>" in its manifest entry'
    f" (or ?sslmode={VERIFIED_TLS}&sslrootcert=<CA file> in its URL)"
)


def tls_warning(
    name: str, url: str | URL, tls: Tls | None = None, fix: str = SOURCE_TLS_FIX
) -> Finding | None:
    """A warning when `url` is PostgreSQL on another host without verified TLS, counting
    the TLS settings `tls` beside the URL (`compliance.pools`: they never disagree)."""
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except ArgumentError:
        return None
    if not parsed.drivername.startswith("postgresql"):
        return None
    hosts = _hosts(parsed.host, parsed.query)
    if all(_loopback(host) for host in hosts):
        return None
    mode = effective_tls(parsed, tls or Tls()).sslmode
    if mode == VERIFIED_TLS:
        return None
    where = ", ".join(hosts)
    return Finding(
        name, Status.WARN, f"{where} is not verified TLS (sslmode={mode or 'unset'}): {fix}"
    )


def control_tls_warning(settings: Settings) -> Finding | None:
    return tls_warning(
        "control database", settings.control_url, settings.control_tls, CONTROL_TLS_FIX
    )


def source_tls_warning(source: object) -> Finding | None:
    """The same warning for a SQL source (any source with an `engine`), by its URL and the
    TLS keys of its manifest entry."""
    engine = getattr(source, "engine", None)
    if not isinstance(engine, Engine):
        return None
    tls = getattr(source, "tls", None)
    name = f"source {getattr(source, 'name', '?')}"
    return tls_warning(name, engine.url, tls if isinstance(tls, Tls) else None)


def _hosts(host: str | None, query: Mapping[str, str | tuple[str, ...]]) -> list[str]:
    hosts = [host] if host else []
    from_query = _query_value(query, "host")
    if from_query:
        hosts += [h for h in from_query.split(",") if h and not h.startswith("/")]
    return hosts or ["localhost"]  # no host: a Unix socket or libpq's default, local


def _query_value(query: Mapping[str, str | tuple[str, ...]], key: str) -> str:
    value = query.get(key, "")
    if isinstance(value, tuple):  # the key given more than once: libpq takes the last
        value = value[-1] if value else ""
    return value


def _loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keyring_warning(settings: Settings, ring: Keyring) -> Finding | None:
    if not ring.development or settings.embedded:
        return None
    return Finding(
        "keyring",
        Status.WARN,
        "a development keyring (a file under GDPR_HOME) protects a shared control database:"
        " set GDPR_KEYS and GDPR_PSEUDONYM_KEY (`gdpr keys generate`)",
    )
