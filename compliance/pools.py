"""Connection pools and TLS of an engine: the control database's and each SQL source's.

The control database takes them from `Settings` (`GDPR_DB_POOL_SIZE`, `GDPR_DB_SSLMODE`,
...), a SQL source from its manifest entry (`pool_size`, `sslmode`, ...). Both end here:
`engine_options` turns a `Pool` and a `Tls` into `create_engine` keyword arguments.

- **Pools**: size and overflow are a PostgreSQL (or other server) engine's; SQLite ignores
  them (its file pool is SQLAlchemy's default, and the pool of a ``:memory:`` database
  refuses an overflow), while recycling and `pre_ping` apply to every pool.
- **TLS** (PostgreSQL only) goes to psycopg as `connect_args`. It may also be written in
  the URL's query (``?sslmode=verify-full&sslrootcert=/ca.pem``). A key given both ways
  must have the same value: a conflict is a `ConfigError`, never one silently winning
  (psycopg would take `connect_args` over the URL). Files named either way are checked
  before the first connection: they must exist, and a CA file must hold PEM certificates.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from compliance.errors import ConfigError

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SYSTEM_CA = "system"  # libpq 16+: the system's trusted CAs instead of a file


@dataclass(frozen=True)
class Pool:
    """How many connections an engine keeps and how long it trusts one."""

    size: int
    max_overflow: int
    recycle_seconds: int = 0  # a connection this old is replaced at checkout; 0: never
    pre_ping: bool = False  # a round trip on every checkout (see ops/README.md)


@dataclass(frozen=True)
class Tls:
    """libpq's TLS parameters, as given in settings or a manifest entry ("": not given)."""

    sslmode: str = ""
    sslrootcert: str = ""
    sslcert: str = ""
    sslkey: str = ""

    def given(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


TLS_KEYS = tuple(f.name for f in fields(Tls))


def check_tls(tls: Tls, where: str, how: Mapping[str, str] | None = None) -> None:
    """Refuse a TLS value that cannot be right, before anything connects. `how` names each
    key as the reader wrote it (``GDPR_DB_SSLMODE``); the default is the key itself."""
    name = {key: (how or {}).get(key, key) for key in TLS_KEYS}
    if tls.sslmode and tls.sslmode not in SSL_MODES:
        raise ConfigError(
            f"{where}: {name['sslmode']} must be one of {', '.join(SSL_MODES)}, not "
            f"{tls.sslmode[:40]!r}"
        )
    if bool(tls.sslcert) != bool(tls.sslkey):
        raise ConfigError(
            f"{where}: {name['sslcert']} and {name['sslkey']} go together (a client"
            " certificate and its key); give both or neither"
        )


def engine_options(
    url: URL, pool: Pool, tls: Tls, where: str, given_in: str = "the settings"
) -> dict[str, Any]:
    """`create_engine` keyword arguments for `url` (without `connect_args` of its own).
    `where` names the database in errors, `given_in` where `pool` and `tls` came from."""
    backend = url.get_backend_name()
    given = tls.given()
    if given and backend != "postgresql":
        raise ConfigError(
            f"{where}: TLS ({', '.join(given)}) applies to PostgreSQL only; remove it for {backend}"
        )
    options: dict[str, Any] = {"pool_recycle": pool.recycle_seconds or -1}
    options["pool_pre_ping"] = pool.pre_ping
    if backend != "sqlite":
        options.update(pool_size=pool.size, max_overflow=pool.max_overflow)
    if backend == "postgresql":
        options["connect_args"] = merge_tls(url, tls, where, given_in)
    return options


def merge_tls(url: URL, tls: Tls, where: str, given_in: str = "the settings") -> dict[str, str]:
    """The TLS parameters to pass besides the URL: those the URL does not already say. A
    key the URL gives a different value is a `ConfigError`; the files either names are
    checked (`check_files`)."""
    in_url = url_tls(url)
    extra = {}
    for key, value in tls.given().items():
        if key not in in_url:
            extra[key] = value
        elif in_url[key] != value:
            raise ConfigError(
                f"{where}: {key} is {value!r} in {given_in} but {in_url[key]!r} in the URL;"
                " keep one of them"
            )
    merged = Tls(**{**in_url, **extra})
    check_tls(Tls(sslmode=merged.sslmode), where)
    check_files(merged, where)
    return extra


def url_tls(url: URL) -> dict[str, str]:
    """The TLS keys the URL's query gives (a key given twice: the last, as libpq does)."""
    found = {}
    for key in TLS_KEYS:
        value = url.query.get(key)
        if isinstance(value, tuple):
            value = value[-1] if value else None
        if value:
            found[key] = value
    return found


def effective_tls(url: URL, tls: Tls) -> Tls:
    """What a connection uses: the URL's keys, then the settings' (they agree, see above)."""
    return Tls(**{**tls.given(), **url_tls(url)})


def check_files(tls: Tls, where: str) -> None:
    """The CA file must hold PEM certificates; a client certificate and key must exist."""
    if tls.sslrootcert and tls.sslrootcert != SYSTEM_CA:
        _check_ca(Path(tls.sslrootcert), where)
    for key in ("sslcert", "sslkey"):
        path = Path(getattr(tls, key))
        if getattr(tls, key) and not path.is_file():
            raise ConfigError(f"{where}: {key} {path} is not a readable file; fix the path")


def _check_ca(path: Path, where: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{where}: sslrootcert {path} is not a readable file; fix the path")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError):
        raise ConfigError(
            f"{where}: sslrootcert {path} holds no PEM CA certificate; give the CA file"
            " that signed the server's certificate"
        ) from None


def connect_reason(orig: BaseException | None) -> str:
    """Why a connection could not be opened, in libpq's first line (it names the host and
    the cause, never a password or a value); the error's type for anything else."""
    first = (str(orig).strip().splitlines() or [""])[0] if orig is not None else ""
    if first.startswith(("connection failed:", "connection to server")):
        return first.removeprefix("connection failed: ")
    return type(orig).__name__
