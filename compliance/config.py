"""Settings: one object, built once at startup from `GDPR_*` variables and `gdpr.toml`.

Precedence: environment > config file > defaults. Unknown keys and malformed values are
`ConfigError` at startup, never a surprise later. Nothing here is read at import time.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from compliance import defaults
from compliance.errors import ConfigError
from compliance.pools import TLS_KEYS, Pool, Tls, check_tls

ENV_PREFIX = "GDPR_"


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything configurable. Build with `load_settings()`; pass it down explicitly.

    Its repr hides secrets: fields marked ``repr=False`` are left out, and passwords in
    URLs (``postgresql://user:secret@host``) are masked.
    """

    home: Path = Path(defaults.HOME)
    database_url: str = ""
    db_pool_size: int = defaults.DB_POOL_SIZE
    db_max_overflow: int = defaults.DB_MAX_OVERFLOW
    db_pool_recycle_seconds: int = 0  # replace connections this old at checkout; 0: never
    db_pool_pre_ping: bool = False  # a round trip per checkout (ops/README.md)
    db_sslmode: str = ""  # libpq sslmode, e.g. verify-full; "" leaves it to the URL
    db_sslrootcert: str = ""  # CA file that signed the server's certificate
    db_sslcert: str = ""  # client certificate (with db_sslkey), if the server wants one
    db_sslkey: str = ""
    broker_url: str = ""
    storage_url: str = ""  # file:///path or s3://bucket/prefix
    s3_endpoint_url: str = ""  # any S3-compatible endpoint; empty means AWS
    s3_region: str = "us-east-1"
    s3_sse: str = ""  # "", "AES256" or "aws:kms"
    mail_url: str = ""  # file:///outbox or smtp://host:port (smtps:// for implicit TLS)
    mail_starttls: bool = False
    mail_username: str = ""
    mail_password: str = field(default="", repr=False)
    mail_from: str = defaults.MAIL_FROM
    keys: str = field(default="", repr=False)  # "kid:base64key,kid2:base64key"; newest last
    keys_file: str = ""  # path to a file holding the same format
    kms_key_id: str = ""  # wrap export data keys with AWS KMS instead of the keyring
    kms_endpoint_url: str = ""
    pseudonym_key: str = field(default="", repr=False)  # base64; HMAC key for pseudonyms
    sources: str = ""  # path of sources.toml; empty: ./sources.toml if present
    operator: str = ""
    four_eyes: bool = defaults.FOUR_EYES
    otp_lockout_minutes: int = defaults.OTP_LOCKOUT_MINUTES
    auto_approve_exports: bool = defaults.AUTO_APPROVE_EXPORTS
    strict_sources: bool = False
    link_ttl_days: int = defaults.LINK_TTL_DAYS
    link_max_downloads: int = defaults.LINK_MAX_DOWNLOADS
    package_ttl_days: int = defaults.PACKAGE_TTL_DAYS
    base_url: str = ""  # public URL of the download service
    serve_host: str = defaults.SERVE_HOST
    serve_port: int = defaults.SERVE_PORT
    rate_limit_per_minute: int = defaults.RATE_LIMIT_PER_MINUTE
    serve_threads: int = defaults.SERVE_THREADS
    serve_connection_limit: int = defaults.SERVE_CONNECTION_LIMIT
    serve_connections_per_client: int = defaults.SERVE_CONNECTIONS_PER_CLIENT
    serve_idle_timeout_seconds: int = defaults.SERVE_IDLE_TIMEOUT_SECONDS
    serve_request_timeout_seconds: int = defaults.SERVE_REQUEST_TIMEOUT_SECONDS
    serve_max_header_bytes: int = defaults.SERVE_MAX_HEADER_BYTES
    serve_max_body_bytes: int = defaults.SERVE_MAX_BODY_BYTES
    trusted_proxy: str = ""  # address of the reverse proxy in front of `gdpr serve`, if any
    batch_size: int = defaults.BATCH_SIZE
    erase_chunk_seconds: float = defaults.ERASE_CHUNK_SECONDS
    export_batch: int = defaults.EXPORT_BATCH
    lock_timeout_ms: int = defaults.LOCK_TIMEOUT_MS
    statement_timeout_ms: int = defaults.STATEMENT_TIMEOUT_MS
    sweep_every_seconds: int = defaults.SWEEP_EVERY_SECONDS
    redispatch_after_seconds: int = defaults.REDISPATCH_AFTER_SECONDS
    lease_seconds: int = defaults.LEASE_SECONDS
    retention_cron: str = defaults.RETENTION_CRON  # minute hour day-of-month month weekday
    suppression_cron: str = ""  # when beat runs `suppression reapply`; "": never
    audit_checkpoint_cron: str = defaults.AUDIT_CHECKPOINT_CRON  # the chain's head to storage
    retention_batch_size: int = defaults.RETENTION_BATCH_SIZE
    retention_max_seconds: int = defaults.RETENTION_MAX_SECONDS
    retention_max_items: int = defaults.RETENTION_MAX_ITEMS
    retention_pause_ms: int = defaults.RETENTION_PAUSE_MS
    retention_chunk_seconds: float = defaults.RETENTION_CHUNK_SECONDS
    retention_lease_seconds: int = defaults.RETENTION_LEASE_SECONDS
    retention_subject_batch: int = defaults.RETENTION_SUBJECT_BATCH
    retention_parts: int = defaults.RETENTION_PARTS
    retention_fanout_rows: int = defaults.RETENTION_FANOUT_ROWS
    retention_notify: bool = False  # email subjects erased by retention their receipt
    retention_report_grace_days: int = defaults.RETENTION_REPORT_GRACE_DAYS
    timezone: str = defaults.TIMEZONE
    log_format: str = defaults.LOG_FORMAT  # "text" or "json"
    metrics_host: str = defaults.METRICS_HOST  # where /metrics listens (worker and serve)
    metrics_port: int = 0  # `gdpr worker`'s /metrics; 0: off
    serve_metrics_port: int = 0  # `gdpr serve`'s /metrics, never its public port; 0: off
    alert_email_to: str = ""  # comma-separated addresses of the on-call and the DPO
    alert_webhook_url: str = field(default="", repr=False)  # Slack-style; holds its secret
    alert_every_seconds: int = defaults.ALERT_EVERY_SECONDS
    alert_refusals_per_hour: int = defaults.ALERT_REFUSALS_PER_HOUR
    alert_failed_steps_per_hour: int = defaults.ALERT_FAILED_STEPS_PER_HOUR
    alert_due_soon_days: int = defaults.ALERT_DUE_SOON_DAYS
    alert_token_refusals: int = defaults.ALERT_TOKEN_REFUSALS
    alert_token_window_minutes: int = defaults.ALERT_TOKEN_WINDOW_MINUTES
    alert_digest_hour: int = defaults.ALERT_DIGEST_HOUR

    # --- derived locations of the embedded defaults ---------------------------------

    @property
    def control_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'control.db'}"

    @property
    def control_pool(self) -> Pool:
        return Pool(
            self.db_pool_size,
            self.db_max_overflow,
            self.db_pool_recycle_seconds,
            self.db_pool_pre_ping,
        )

    @property
    def control_tls(self) -> Tls:
        return Tls(self.db_sslmode, self.db_sslrootcert, self.db_sslcert, self.db_sslkey)

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.db'}"

    @property
    def storage(self) -> str:
        return self.storage_url or (self.home / "objects").resolve().as_uri()

    @property
    def mail(self) -> str:
        return self.mail_url or (self.home / "outbox").resolve().as_uri()

    @property
    def download_base_url(self) -> str:
        return self.base_url or f"http://{self.serve_host}:{self.serve_port}"

    @property
    def sources_path(self) -> Path | None:
        if self.sources:
            return Path(self.sources)
        default = Path(defaults.SOURCES_FILE)
        return default if default.exists() else None

    @property
    def embedded(self) -> bool:
        """True when running on the embedded defaults (SQLite, filesystem, outbox)."""
        return self.control_url.startswith("sqlite")

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name in _URL_FIELDS:
                value = mask_password(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def mask_password(url: str) -> str:
    """`url` with the password of its user info replaced by ``***`` (for display only)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_URL_FIELDS = {
    "database_url": ("sqlite", "postgresql", "postgresql+psycopg"),
    "broker_url": ("redis", "rediss", "sqla+sqlite", "sqla+postgresql", "memory", "amqp"),
    "storage_url": ("file", "s3"),
    "mail_url": ("file", "smtp", "smtps"),
    "s3_endpoint_url": ("http", "https"),
    "kms_endpoint_url": ("http", "https"),
    "base_url": ("http", "https"),
    "alert_webhook_url": ("http", "https"),
}


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> Settings:
    """Build `Settings` from a config file (optional) and the environment."""
    env = os.environ if environ is None else environ
    path = config_file or Path(env.get(f"{ENV_PREFIX}CONFIG", defaults.CONFIG_FILE))
    raw: dict[str, Any] = {}
    if path.exists():
        raw.update(_read_toml(path))
    elif config_file is not None or f"{ENV_PREFIX}CONFIG" in env:
        raise ConfigError(f"config file {path} does not exist; create it or unset GDPR_CONFIG")
    raw.update(_read_env(env))
    values = {name: _coerce(name, value) for name, value in raw.items()}
    if not values.get("operator"):
        values["operator"] = _login_name()
    settings = Settings(**values)
    _validate(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    table = data.get("gdpr", data)
    for key in table:
        if key not in _FIELDS or key == "config":
            raise ConfigError(f"{path}: unknown setting '{key}'; see README.md#configuration")
    return dict(table)


def _read_env(env: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    ignored = {"CONFIG"}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :]
        if name in ignored or name.startswith("TEST_"):
            continue
        if name.lower() not in _FIELDS:
            raise ConfigError(f"unknown environment variable {key}; see README.md#configuration")
        found[name.lower()] = value
    return found


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "bool":
            return _to_bool(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "int":
            if isinstance(value, bool | float):  # TOML 2.5 or true: never truncate silently
                raise ValueError(value)
            return int(value)
        if kind == "Path":
            return Path(value)
    except ValueError as exc:
        raise ConfigError(f"setting '{name}' must be a {kind}, got {value!r}") from exc
    return str(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(value)


def _validate(settings: Settings) -> None:
    for name, schemes in _URL_FIELDS.items():
        url = getattr(settings, name)
        if not url:
            continue
        try:
            parts = urlsplit(url)
            _ = parts.port  # parsing the port raises on a malformed one
        except ValueError:
            raise ConfigError(
                f"setting '{name}' is not a valid URL (check brackets, port and characters)"
            ) from None
        if parts.scheme not in schemes:
            allowed = ", ".join(f"{s}://" for s in schemes)
            raise ConfigError(f"setting '{name}' has a malformed URL; expected one of {allowed}")
        if parts.scheme in {"http", "https", "smtp", "smtps", "redis", "s3"} and not parts.netloc:
            raise ConfigError(f"setting '{name}' has no host (or bucket); fix the URL")
    if settings.s3_sse not in {"", "AES256", "aws:kms"}:
        raise ConfigError("setting 's3_sse' must be '', 'AES256' or 'aws:kms'")
    at_least = {
        "link_ttl_days": 1,
        "otp_lockout_minutes": 1,
        "link_max_downloads": 1,
        "package_ttl_days": 1,
        "batch_size": 1,
        "rate_limit_per_minute": 1,
        "serve_connection_limit": 10,
        "serve_connections_per_client": 0,
        "serve_idle_timeout_seconds": 1,
        "serve_request_timeout_seconds": 1,
        "serve_max_header_bytes": 1024,
        "serve_max_body_bytes": 4096,  # the app itself takes bodies up to 4 KiB
        "sweep_every_seconds": 1,
        "lease_seconds": 3,
        "redispatch_after_seconds": 0,
        "lock_timeout_ms": 0,
        "db_pool_size": 1,
        "db_max_overflow": 0,
        "db_pool_recycle_seconds": 0,
        "statement_timeout_ms": 0,
        "retention_batch_size": 1,
        "retention_max_seconds": 1,
        "retention_max_items": 0,
        "retention_pause_ms": 0,
        "retention_lease_seconds": 10,
        "retention_subject_batch": 1,
        "retention_parts": 1,
        "export_batch": 1,
        "retention_fanout_rows": 1,
        "retention_report_grace_days": 0,
        "alert_every_seconds": 10,
        "alert_refusals_per_hour": 1,
        "alert_failed_steps_per_hour": 1,
        "alert_due_soon_days": 0,
        "alert_token_refusals": 1,
        "alert_token_window_minutes": 1,
    }
    if settings.erase_chunk_seconds <= 0:
        raise ConfigError("setting 'erase_chunk_seconds' must be more than 0")
    for name, low in at_least.items():
        if getattr(settings, name) < low:
            raise ConfigError(f"setting '{name}' must be at least {low}")
    if not 1 <= settings.serve_port <= 65535:
        raise ConfigError("setting 'serve_port' must be between 1 and 65535")
    _validate_metrics(settings)
    if not 0 <= settings.alert_digest_hour <= 23:
        raise ConfigError("setting 'alert_digest_hour' must be an hour between 0 and 23")
    if not 1 <= settings.serve_threads <= 256:
        raise ConfigError("setting 'serve_threads' must be between 1 and 256")
    if settings.retention_chunk_seconds <= 0:
        raise ConfigError("setting 'retention_chunk_seconds' must be more than 0")
    _validate_cron("retention_cron", settings.retention_cron)
    _validate_cron("audit_checkpoint_cron", settings.audit_checkpoint_cron)
    if settings.suppression_cron:
        _validate_cron("suppression_cron", settings.suppression_cron)
    how = {key: f"setting 'db_{key}'" for key in TLS_KEYS}
    check_tls(settings.control_tls, "control database", how)
    _validate_timezone(settings.timezone)
    _validate_proxy(settings.trusted_proxy)


def _validate_metrics(settings: Settings) -> None:
    if settings.log_format not in defaults.LOG_FORMATS:
        raise ConfigError(
            f"setting 'log_format' must be 'text' or 'json', not {settings.log_format[:20]!r}"
        )
    for name in ("metrics_port", "serve_metrics_port"):
        if not 0 <= getattr(settings, name) <= 65535:
            raise ConfigError(f"setting '{name}' must be between 0 (off) and 65535")
    if settings.serve_metrics_port == settings.serve_port:
        raise ConfigError(
            "setting 'serve_metrics_port' must differ from 'serve_port': /metrics is never"
            " served on the public download port"
        )
    if settings.metrics_port and settings.metrics_port == settings.serve_metrics_port:
        raise ConfigError(
            "settings 'metrics_port' (worker) and 'serve_metrics_port' (download service)"
            " must differ"
        )
    if not settings.metrics_host.strip():
        raise ConfigError("setting 'metrics_host' must be an interface, e.g. 127.0.0.1")


def _validate_proxy(address: str) -> None:
    import ipaddress

    if not address:
        return
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(
            "setting 'trusted_proxy' must be the IP address of your reverse proxy"
        ) from None


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def _validate_cron(name: str, expression: str) -> None:
    """Five crontab fields (minute hour day-of-month month day-of-week), numbers only."""
    fields = expression.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(
            f"setting '{name}' must be five crontab fields like '0 2 * * *'"
            f" (minute hour day month weekday), not {expression[:40]!r}"
        )


def _validate_timezone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"setting 'timezone' is not a known time zone: {name!r}") from exc


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
