"""The download service under abusive clients, over real sockets on loopback.

Slow clients (slowloris), greedy clients, clients that never read, and requests waitress
refuses itself. Both ends of every connection live in this process, so the tests raise
its RLIMIT_NOFILE first.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compliance.config import Settings, load_settings
from compliance.errors import ConfigError
from exporters import web_server
from exporters.web import create_app
from exporters.web_server import SECURITY_HEADERS, BackgroundServer, ServerLimits, start_in_thread
from tests.conftest import DownloadSite

pytestmark = pytest.mark.fault  # part of the fault suite

SLOW_CONNECTIONS = 1000
ATTACKER = "127.0.0.1"
NEIGHBOUR = "127.0.0.2"  # another client: Linux routes all of 127.0.0.0/8 to loopback
BUDGET = 1.0  # seconds for a normal client's landing page GET and download POST


@pytest.fixture
def settings(sqlite_settings: Settings) -> Settings:
    """The database does not matter here: SQLite only."""
    return sqlite_settings


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Room for both ends of SLOW_CONNECTIONS connections, or a skip saying why not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * SLOW_CONNECTIONS + 512
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}: raise it (ulimit -Hn)")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class SlowClients:
    """Connections that send a request line, then one header line every `every` seconds,
    never the blank line that ends the headers."""

    def __init__(self, port: int, source: str = ATTACKER, every: float = 1.0) -> None:
        self.port, self.source, self.every = port, source, every
        self.sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, name="slow-clients", daemon=True)

    def open(self, count: int) -> SlowClients:
        for _ in range(count):
            sock = socket.create_connection(
                ("127.0.0.1", self.port), timeout=5, source_address=(self.source, 0)
            )
            self.sockets.append(sock)
            sock.setblocking(False)
            self._send(sock, b"GET /d/slow HTTP/1.1\r\nHost: x\r\n")
        return self

    def start(self) -> SlowClients:
        self._thread.start()
        return self

    def open_count(self) -> int:
        """Connections the server still holds open (no EOF, no reset)."""
        return sum(1 for sock in self.sockets if _still_open(sock))

    def wait_closed(self, within: float) -> float:
        """Seconds until the server closed every connection; fails after `within`."""
        start = time.monotonic()
        while self.open_count():
            assert time.monotonic() - start < within, f"{self.open_count()} still open"
            time.sleep(0.1)
        return time.monotonic() - start

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()

    def _trickle(self) -> None:
        while not self._stop.wait(self.every):
            for sock in self.sockets:
                self._send(sock, b"X-Slow: 1\r\n")

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):  # refused or timed out by the server
            sock.send(data)


def _still_open(sock: socket.socket) -> bool:
    if sock.fileno() < 0:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))  # a response would count as open too
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.fixture
def slow_clients() -> Iterator[Callable[..., SlowClients]]:
    made: list[SlowClients] = []

    def make(port: int, count: int, source: str = ATTACKER, every: float = 1.0) -> SlowClients:
        clients = SlowClients(port, source, every)
        made.append(clients)
        return clients.open(count)

    yield make
    for clients in made:
        clients.close()


def landing_and_download(site: DownloadSite, server: BackgroundServer, source: str) -> float:
    """Seconds for a data subject's GET of the landing page and POST of the download."""
    start = time.monotonic()
    for method in ("GET", "POST"):
        conn = http.client.HTTPConnection(
            "127.0.0.1", server.port, timeout=10, source_address=(source, 0)
        )
        try:
            conn.request(method, f"/d/{site.token}", body=b"" if method == "POST" else None)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, (method, response.status)
        if method == "POST":
            assert body == site.zip_bytes
    return time.monotonic() - start


def serve_site(site: DownloadSite, **changes: Any) -> BackgroundServer:
    """The site's app on a server of its own, built from settings with `changes`."""
    app = create_app(site.settings.with_overrides(**changes), site.db, site.storage, site.keyring)  # type: ignore[arg-type]
    return start_in_thread(app)


def open_connections(server: BackgroundServer) -> int:
    return len(server.server.active_channels)


def raw_request(server: BackgroundServer, data: bytes) -> tuple[int, dict[str, str]]:
    """Send `data` as is; the status and headers of whatever comes back."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sender = threading.Thread(target=_send_quietly, args=(sock, data))
    sender.start()
    received = b""
    try:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    finally:
        sender.join(timeout=10)
        sock.close()
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    assert head[0].startswith("HTTP/"), head[0]
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), headers


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server answers and closes before reading it all
        sock.sendall(data)


def assert_secure(headers: dict[str, str]) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name


# --- slow clients -------------------------------------------------------------------------


@pytest.mark.usefixtures("many_descriptors")
def test_a_thousand_slow_connections_from_one_client_do_not_slow_another_client(
    download_site: DownloadSite, slow_clients: Callable[..., SlowClients]
) -> None:
    server: BackgroundServer = download_site.server  # type: ignore[assignment]
    attack = slow_clients(server.port, SLOW_CONNECTIONS).start()
    time.sleep(1.5)  # a round or two of trickling
    held = open_connections(server)
    times = [landing_and_download(download_site, server, NEIGHBOUR) for _ in range(3)]
    print(f"\nper-client cap: {held} connections held, GET+POST {_summary(times)}")
    assert held <= ServerLimits().connections_per_client + 1
    assert attack.open_count() <= ServerLimits().connections_per_client
    assert max(times) < BUDGET


@pytest.mark.usefixtures("many_descriptors")
def test_without_a_per_client_cap_a_thousand_slow_connections_still_leave_room(
    download_site: DownloadSite, slow_clients: Callable[..., SlowClients]
) -> None:
    server = serve_site(download_site, serve_connections_per_client=0)
    try:
        attack = slow_clients(server.port, SLOW_CONNECTIONS).start()
        time.sleep(1.5)
        assert attack.open_count() == SLOW_CONNECTIONS  # all held: poll(), fds, the limit
        times = [landing_and_download(download_site, server, ATTACKER) for _ in range(3)]
        print(f"\nno cap: {open_connections(server)} connections held, GET+POST {_summary(times)}")
        assert max(times) < BUDGET
    finally:
        server.stop()


def test_a_request_that_trickles_in_is_closed_after_the_request_timeout(
    download_site: DownloadSite, slow_clients: Callable[..., SlowClients]
) -> None:
    server = serve_site(
        download_site, serve_request_timeout_seconds=1, serve_idle_timeout_seconds=60
    )
    try:
        attack = slow_clients(server.port, 20, every=0.2).start()
        took = attack.wait_closed(within=5)
        print(f"\ntrickling connections closed after {took:.2f} s")
        assert took >= 0.9  # not before the timeout, although every byte was on time
        assert landing_and_download(download_site, server, ATTACKER) < BUDGET
    finally:
        server.stop()


def test_a_silent_connection_is_closed_after_the_idle_timeout(
    download_site: DownloadSite,
) -> None:
    server = serve_site(
        download_site, serve_idle_timeout_seconds=1, serve_request_timeout_seconds=60
    )
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        for sock in silent:
            sock.setblocking(False)
        start = time.monotonic()
        while any(_still_open(sock) for sock in silent):
            assert time.monotonic() - start < 5, "silent connections still open"
            time.sleep(0.1)
        assert time.monotonic() - start >= 0.5
    finally:
        for sock in silent:
            sock.close()
        server.stop()


def test_connections_beyond_the_per_client_cap_are_closed_at_once(
    download_site: DownloadSite, slow_clients: Callable[..., SlowClients]
) -> None:
    server = serve_site(download_site, serve_connections_per_client=5)
    try:
        first = slow_clients(server.port, 5)
        extra = slow_clients(server.port, 5)
        time.sleep(0.5)
        assert first.open_count() == 5 and extra.open_count() == 0
        assert open_connections(server) == 5
        assert landing_and_download(download_site, server, NEIGHBOUR) < BUDGET
        first.close()
        time.sleep(0.5)
        again = slow_clients(server.port, 5)  # closing frees the client's slots
        time.sleep(0.5)
        assert again.open_count() == 5
    finally:
        server.stop()


def test_the_trusted_proxy_is_not_capped_per_client(
    download_site: DownloadSite, slow_clients: Callable[..., SlowClients]
) -> None:
    app = create_app(
        download_site.settings.with_overrides(serve_connections_per_client=5),
        download_site.db,
        download_site.storage,  # type: ignore[arg-type]
        download_site.keyring,  # type: ignore[arg-type]
    )
    server = start_in_thread(app, trusted_proxy=ATTACKER)
    try:
        proxied = slow_clients(server.port, 12)
        time.sleep(0.5)
        assert proxied.open_count() == 12
    finally:
        server.stop()


def test_a_response_nobody_reads_is_dropped_and_frees_its_thread() -> None:
    chunk = b"x" * 262_144
    finished: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if environ["PATH_INFO"] == "/small":
            yield b"ok"
            return
        try:
            for _ in range(1024):  # 256 MiB, far beyond every buffer on the way
                yield chunk
        finally:
            finished.append("big")

    server = start_in_thread(app, limits=ServerLimits(idle_timeout=1), threads=1)
    reader = socket.socket()
    try:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", server.port))
        reader.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        time.sleep(0.5)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        start = time.monotonic()
        try:
            conn.request("GET", "/small")  # waits for the only thread
            assert conn.getresponse().read() == b"ok"
        finally:
            conn.close()
        took = time.monotonic() - start
        print(f"\nthe only thread was free again after {took:.2f} s")
        assert finished == ["big"]
    finally:
        reader.close()
        server.stop()


# --- waitress's own responses ---------------------------------------------------------------


def test_an_oversized_header_gets_431_with_the_security_headers(
    download_site: DownloadSite,
) -> None:
    server: BackgroundServer = download_site.server  # type: ignore[assignment]
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n"
    status, headers = raw_request(server, huge)
    assert status == 431
    assert_secure(headers)


def test_a_malformed_request_line_gets_400_with_the_security_headers(
    download_site: DownloadSite,
) -> None:
    server: BackgroundServer = download_site.server  # type: ignore[assignment]
    status, headers = raw_request(server, b"GARBAGE\r\n\r\n")
    assert status == 400
    assert_secure(headers)


def test_an_oversized_body_gets_413_with_the_security_headers(
    download_site: DownloadSite,
) -> None:
    server: BackgroundServer = download_site.server  # type: ignore[assignment]
    request = (
        f"POST /d/{download_site.token} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    )
    status, headers = raw_request(server, request.encode())
    assert status == 413
    assert_secure(headers)


def test_a_crash_outside_the_app_gets_500_with_the_security_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("no app here")

    server = start_in_thread(broken)
    try:
        with caplog.at_level(logging.CRITICAL, logger="waitress"):
            status, headers = raw_request(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        server.stop()
    assert status == 500
    assert_secure(headers)


# --- settings and descriptors ---------------------------------------------------------------


def test_server_limits_come_from_settings_and_bad_ones_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "gdpr.toml"
    config.write_text(
        "[gdpr]\nserve_connection_limit = 5000\nserve_connections_per_client = 0\n"
        "serve_idle_timeout_seconds = 20\nserve_request_timeout_seconds = 5\n"
        "serve_max_header_bytes = 8192\nserve_max_body_bytes = 8192\nserve_threads = 16\n"
    )
    settings = load_settings({}, config)
    limits = ServerLimits.from_settings(settings)
    assert limits == ServerLimits(5000, 0, 20, 5, 8192, 8192) and settings.serve_threads == 16
    options = limits.adjustments()
    assert options["channel_timeout"] == 20 and options["max_request_header_size"] == 8192
    assert options["asyncore_use_poll"] is True  # select() stops at descriptor 1023
    for name, value in [
        ("SERVE_REQUEST_TIMEOUT_SECONDS", "0"),
        ("SERVE_CONNECTIONS_PER_CLIENT", "-1"),
        ("SERVE_MAX_BODY_BYTES", "100"),
        ("SERVE_THREADS", "0"),
    ]:
        with pytest.raises(ConfigError, match=name.lower()):
            load_settings({f"GDPR_{name}": value}, config)


def test_the_descriptor_limit_is_raised_to_fit_or_the_connection_limit_lowered(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limits: dict[str, tuple[int, int]] = {}

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        limits["set"] = value

    monkeypatch.setattr(web_server.resource, "setrlimit", setrlimit)
    monkeypatch.setattr(web_server.resource, "getrlimit", lambda which: (1024, 65536))
    with caplog.at_level(logging.INFO, logger="gdpr.web.server"):
        assert web_server.fit_file_descriptors(ServerLimits()) == ServerLimits()
    assert limits["set"] == (65536, 65536) and "web.fd_limit_raised" in caplog.text

    monkeypatch.setattr(web_server.resource, "getrlimit", lambda which: (1024, 1024))
    with caplog.at_level(logging.INFO, logger="gdpr.web.server"):
        fitted = web_server.fit_file_descriptors(ServerLimits(connection_limit=2000))
    assert fitted.connection_limit == 1024 - web_server.FD_RESERVE
    assert "web.connection_limit_lowered" in caplog.text


def _summary(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
