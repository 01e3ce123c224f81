"""The services the test suite talks to, taken from variables and never left behind.

- PostgreSQL and Redis are the machine's (`GDPR_TEST_PG_*`, `GDPR_TEST_REDIS_*`): the suite
  creates only databases whose names start with `GDPR_TEST_DB_PREFIX`, drops each one it made,
  and uses only Redis db `GDPR_TEST_REDIS_DB` (and `GDPR_TEST_REDIS_CACHE_DB` for the sample
  app's cart cache).
- The S3-compatible server and the SMTP server are the suite's own: each session starts them
  on free loopback ports and stops them at the end, unless `GDPR_TEST_S3_PORT` or
  `GDPR_TEST_SMTP_PORT` (+ `GDPR_TEST_SMTP_DIR`) name servers that are already running.

A service-backed test skips with a hint when its service is down on a developer machine,
and fails when `CI` is set: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]
PG_HOST = os.environ.get("GDPR_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("GDPR_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("GDPR_TEST_PG_USER", "postgres")
DB_PREFIX = os.environ.get("GDPR_TEST_DB_PREFIX", "gdpr_test_")
REDIS_HOST = os.environ.get("GDPR_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("GDPR_TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("GDPR_TEST_REDIS_DB", "9"))
REDIS_CACHE_DB = int(os.environ.get("GDPR_TEST_REDIS_CACHE_DB", "10"))
S3_PORT = os.environ.get("GDPR_TEST_S3_PORT")
SMTP_PORT = os.environ.get("GDPR_TEST_SMTP_PORT")
SMTP_DIR = os.environ.get("GDPR_TEST_SMTP_DIR")
ON_CI = bool(os.environ.get("CI"))


def unavailable(message: str) -> None:
    """Skip (developer machine) or fail (CI) with `message`."""
    if ON_CI:
        pytest.fail(message)
    pytest.skip(message)


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def require_service(name: str, port: int, host: str = "127.0.0.1") -> None:
    """Skip (developer machine) or fail (CI) unless `host:port` accepts connections."""
    if not answers(host, port):
        unavailable(f"{name} is not answering on {host}:{port}; run `bash ops/services.sh up`")


def pg_admin_url() -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def pg_url_of(name: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@contextmanager
def pg_database(label: str) -> Iterator[str]:
    """A new PostgreSQL database `<GDPR_TEST_DB_PREFIX><label>_<random>`, dropped afterwards:
    its URL."""
    require_service("PostgreSQL", PG_PORT, PG_HOST)
    name = f"{DB_PREFIX}{label}_{secrets.token_hex(4)}"
    admin = create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield pg_url_of(name)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                # the operators' group role its migration made (migration 0002)
                conn.execute(text(f'DROP ROLE IF EXISTS "{name[:53]}_operators"'))
    finally:
        admin.dispose()


@contextmanager
def pg_logins(url: str, names: Sequence[str]) -> Iterator[dict[str, str]]:
    """Database logins `<GDPR_TEST_DB_PREFIX><name>_<random>`, members of the operators'
    group of `url`'s (migrated) database: name -> URL connecting as that login (the
    server trusts loopback logins). Dropped afterwards."""
    database = url.rsplit("/", 1)[1]
    suffix = secrets.token_hex(3)
    logins = {name: f"{DB_PREFIX}{name}_{suffix}" for name in names}
    admin = create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for login in logins.values():
                conn.execute(text(f'CREATE ROLE "{login}" LOGIN'))
                conn.execute(text(f'GRANT "{database[:53]}_operators" TO "{login}"'))
        yield {
            name: f"postgresql+psycopg://{login}@{PG_HOST}:{PG_PORT}/{database}"
            for name, login in logins.items()
        }
    finally:
        with admin.connect() as conn:
            for login in logins.values():
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :u"
                    ),
                    {"u": login},
                )
                conn.execute(text(f'DROP ROLE IF EXISTS "{login}"'))
        admin.dispose()


def login_of(url: str) -> str:
    """The login a `pg_logins` URL connects as."""
    return url.split("://", 1)[1].split("@", 1)[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """A server the suite started as a child process on a loopback port; `stop` ends it."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )

    def wait_until_answering(self, seconds: float = 30.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if answers("127.0.0.1", self.port, timeout=0.5):
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def own_server(name: str, argv_for_port: Sequence[str], folder: Path) -> Iterator[int]:
    """Start `argv_for_port` (with `{port}` replaced by a free port), wait until it answers,
    yield the port, stop it afterwards."""
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in argv_for_port]
    server = ServerProcess(name, argv, port, folder / f"{name}.log")
    try:
        if not server.wait_until_answering():
            tail = server.log.read_text(errors="replace")[-400:].replace("\n", " | ")
            unavailable(f"could not start the test {name} server on 127.0.0.1:{port}: {tail}")
        yield port
    finally:
        server.stop()


@contextmanager
def s3_server(folder: Path) -> Iterator[str]:
    """The S3-compatible endpoint: `GDPR_TEST_S3_PORT`'s, or a moto server of our own."""
    if S3_PORT:
        require_service("the local S3-compatible server", int(S3_PORT))
        yield f"http://127.0.0.1:{S3_PORT}"
        return
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"]
    with own_server("s3", argv, folder) as port:
        yield f"http://127.0.0.1:{port}"


@contextmanager
def smtp_server(folder: Path) -> Iterator[tuple[str, int, Path]]:
    """(host, port, maildir) of the SMTP server: `GDPR_TEST_SMTP_PORT`'s, or our own sink."""
    if SMTP_PORT:
        require_service("the local SMTP server", int(SMTP_PORT))
        yield "127.0.0.1", int(SMTP_PORT), Path(SMTP_DIR or "/tmp/gdpr-smtp")
        return
    maildir = folder / "maildir"
    sink = str(ROOT / "ops" / "smtp_sink.py")
    argv = [sys.executable, sink, "--port", "{port}", "--maildir", str(maildir)]
    with own_server("smtp", argv, folder) as port:
        yield "127.0.0.1", port, maildir


def empty_redis_dbs() -> None:
    """Empty the suite's two Redis dbs (Celery's bindings, the sample app's cache), so a
    session leaves nothing behind in them; nothing when Redis is not answering."""
    if not answers(REDIS_HOST, REDIS_PORT):
        return
    import redis

    for db in (REDIS_DB, REDIS_CACHE_DB):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        try:
            client.flushdb()
        finally:
            client.close()
