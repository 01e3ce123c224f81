"""Running the download service on waitress, in the foreground or in a background thread.

Waitress logs the request path when something fails mid-response; our paths hold
download tokens, so `redact_tokens_in_logs` rewrites ``/d/<anything>`` in every record of
the waitress loggers before a handler sees it.

Waitress is built here from its own parts, `TcpWSGIServer` and `HTTPChannel` (the
subclassing route webtest takes), so that slow and greedy clients cannot hold it and a
large download is sent cheaply:

- `GuardedServer` refuses a client's connection beyond `connections_per_client` at
  accept (closed at once, before it costs a channel), except from the trusted proxy;
- `GuardedChannel` notes when a request's first byte arrived, and the server's
  maintenance (every `CLEANUP_INTERVAL` s) closes a request still incomplete after
  `request_timeout`, however steadily it trickles, and a response nobody has read
  for `idle_timeout` (waitress closes only idle connections, by their last byte);
- `SecureErrorTask` puts `SECURITY_HEADERS` on waitress's own 400/413/431/500 responses;
- a large response chunk is sent from where it is (`QueuedBytes`), not copied into a
  buffer and out again, and the main loop leaves a socket alone while the task thread
  is sending on it (waitress has the loop spin on the busy lock meanwhile);
- poll() instead of select() (select cannot watch descriptors above 1023) and a soft
  RLIMIT_NOFILE raised to fit `connection_limit` (see `fit_file_descriptors`).

See exporters/README.md, "The download service under load", for the numbers and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import resource
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from waitress.adjustments import Adjustments
from waitress.buffers import ReadOnlyFileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer, TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from compliance import defaults
from exporters.ratelimit import client_key

if TYPE_CHECKING:
    from compliance.config import Settings

log = logging.getLogger("gdpr.web.server")

TOKEN_IN_PATH = re.compile(r"/d/[^\s/?#\"']+")
REDACTED = "/d/<token>"
SERVER_IDENT = "gdpr"
_LOGGERS = ("waitress", "waitress.queue")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CLEANUP_INTERVAL = 1  # seconds between sweeps for timed-out connections (waitress: 30)
BACKLOG = 2048  # accepted-but-unserved connections the kernel queues (capped by somaxconn)
# A response waits in memory, never in a temporary file (waitress spills past 1 MiB): the
# app thread blocks once 4 MiB are unsent, so one download holds at most ~5 MiB.
OUTBUF_HIGH_WATERMARK = 4 << 20
OUTBUF_OVERFLOW = OUTBUF_HIGH_WATERMARK + (1 << 20)
QUEUE_AS_IS_BYTES = 64 << 10  # response chunks this large are sent without being copied
FD_RESERVE = 128  # descriptors kept for the database, storage, spooled buffers and logs
REFUSALS_LOG_EVERY = 10.0  # seconds; refused connections are logged as a count, not each


class TokenRedactor(logging.Filter):
    """Replace download tokens in log records (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = TOKEN_IN_PATH.sub(REDACTED, record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_scrub(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _scrub(value) for key, value in record.args.items()}
        return True


def _scrub(value: Any) -> Any:
    return TOKEN_IN_PATH.sub(REDACTED, value) if isinstance(value, str) else value


def redact_tokens_in_logs() -> None:
    """Install the redactor on the waitress loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactor) for f in logger.filters):
            logger.addFilter(TokenRedactor())


def proxy_options(trusted_proxy: str) -> dict[str, Any]:
    """Waitress options to take the client address from X-Forwarded-For, only when the
    connection comes from `trusted_proxy` (waitress drops the header otherwise)."""
    if not trusted_proxy:
        return {}
    return {
        "trusted_proxy": trusted_proxy,
        "trusted_proxy_count": 1,
        "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
    }


# --- limits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerLimits:
    """How many connections the server holds, per client and in all, and for how long."""

    connection_limit: int = defaults.SERVE_CONNECTION_LIMIT
    connections_per_client: int = defaults.SERVE_CONNECTIONS_PER_CLIENT  # 0: no cap
    idle_timeout: int = defaults.SERVE_IDLE_TIMEOUT_SECONDS
    request_timeout: int = defaults.SERVE_REQUEST_TIMEOUT_SECONDS
    max_header_bytes: int = defaults.SERVE_MAX_HEADER_BYTES
    max_body_bytes: int = defaults.SERVE_MAX_BODY_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            connection_limit=settings.serve_connection_limit,
            connections_per_client=settings.serve_connections_per_client,
            idle_timeout=settings.serve_idle_timeout_seconds,
            request_timeout=settings.serve_request_timeout_seconds,
            max_header_bytes=settings.serve_max_header_bytes,
            max_body_bytes=settings.serve_max_body_bytes,
        )

    def adjustments(self) -> dict[str, Any]:
        """The waitress options these limits stand for."""
        return {
            "connection_limit": self.connection_limit,
            "channel_timeout": self.idle_timeout,
            "cleanup_interval": CLEANUP_INTERVAL,
            "max_request_header_size": self.max_header_bytes,
            "max_request_body_size": self.max_body_bytes,
            "asyncore_use_poll": True,
            "backlog": BACKLOG,
            "outbuf_high_watermark": OUTBUF_HIGH_WATERMARK,
            "outbuf_overflow": OUTBUF_OVERFLOW,
        }


def limits_for(app: Any) -> ServerLimits:
    """The limits an app was built with (`create_app` sets them from settings)."""
    limits = getattr(app, "server_limits", None)
    return limits if isinstance(limits, ServerLimits) else ServerLimits()


def fit_file_descriptors(limits: ServerLimits) -> ServerLimits:
    """Raise the soft RLIMIT_NOFILE to the hard limit when `connection_limit` needs more
    descriptors than it allows; lower `connection_limit` when even the hard limit is short."""
    needed = limits.connection_limit + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else hard
    if _below(soft, needed) and _below(soft, target):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("web.fd_limit_not_raised", extra={"soft": soft, "hard": hard})
        else:
            log.info("web.fd_limit_raised", extra={"soft_was": soft, "soft": target})
            soft = target
    if not _below(soft, needed):
        return limits
    fitted = max(soft - FD_RESERVE, 10)
    log.warning(
        "web.connection_limit_lowered",
        extra={"configured": limits.connection_limit, "effective": fitted, "fd_limit": soft},
    )
    return dataclasses.replace(limits, connection_limit=fitted)


def _below(limit: int, needed: int) -> bool:
    return limit != resource.RLIM_INFINITY and limit < needed


# --- waitress parts ---------------------------------------------------------------------


class SecureErrorTask(ErrorTask):  # type: ignore[misc]
    """Waitress's own error responses (400, 413, 431, 500...) with our security headers."""

    def execute(self) -> None:
        self.response_headers.extend(SECURITY_HEADERS.items())
        super().execute()


class QueuedBytes(ReadOnlyFileBasedBuffer):  # type: ignore[misc]
    """One large response chunk, sent from where it is. Waitress copies every chunk an app
    yields into a BytesIO and out again before sending it; only a file wrapper's buffer is
    sent from directly, so a chunk queued as one skips both copies. It is counted against
    the output watermark like any other buffered byte."""

    def __init__(self, data: bytes) -> None:  # no file: nothing of the parent's state
        self.view = memoryview(data)
        self.remain = len(data)

    def get(self, numbytes: int = -1, skip: bool = False) -> memoryview:
        start = len(self.view) - self.remain
        end = start + self.remain if numbytes < 0 else start + min(numbytes, self.remain)
        if skip:
            self.remain -= end - start
        return self.view[start:end]

    def skip(self, numbytes: int, allow_prune: bool = False) -> None:
        if numbytes > self.remain:
            raise ValueError(f"cannot skip {numbytes} bytes of {self.remain}")
        self.remain -= numbytes

    def close(self) -> None:
        self.remain = 0
        self.view = memoryview(b"")


class GuardedChannel(HTTPChannel):  # type: ignore[misc]
    """One connection: counted against its client, and timed from each request's start."""

    error_task_class = SecureErrorTask
    client = ""
    request_started = 0.0  # when the first byte of the incomplete `request` arrived
    _counted = False

    def __init__(self, server: GuardedServer, sock: Any, addr: Any, adj: Any, map: Any) -> None:
        self.client = client_key(addr[0])
        super().__init__(server, sock, addr, adj, map=map)

    def add_channel(self, map: Any = None) -> None:
        super().add_channel(map)
        self.server.opened(self.client)
        self._counted = True

    def del_channel(self, map: Any = None) -> None:
        super().del_channel(map)
        if self._counted:
            self._counted = False
            self.server.closed(self.client)

    # --- output: one writer at a time -----------------------------------------------
    # Waitress lets the task thread send its own output (under the outbuf lock) while the
    # main loop, seeing the socket writable, tries the same lock, fails and polls again at
    # once: it spins for as long as the task sends, taking the CPU and the GIL from it.
    # While a task is inside `write_soon` the loop leaves the socket alone; whatever the
    # task could not send is the loop's again as soon as the task returns (or waits for
    # the client to read: `_flush_outbufs_below_high_watermark`).
    _task_writing = False

    def writable(self) -> bool:
        if self._task_writing and not (self.will_close or self.close_when_flushed):
            return False
        return bool(super().writable())

    def write_soon(self, data: Any) -> int:
        """Queue response bytes; a chunk of at least `QUEUE_AS_IS_BYTES` goes as it is."""
        if type(data) is bytes and len(data) >= QUEUE_AS_IS_BYTES:
            data = QueuedBytes(data)
        self._task_writing = True
        try:
            return int(super().write_soon(data))
        finally:
            self._task_writing = False
            if self.total_outbufs_len:
                self.server.pull_trigger()  # the loop sends the rest while the task works

    def _flush_outbufs_below_high_watermark(self) -> None:
        writing, self._task_writing = self._task_writing, False  # the loop sends meanwhile
        try:
            super()._flush_outbufs_below_high_watermark()
        finally:
            self._task_writing = writing

    def received(self, data: bytes) -> bool:
        pending = self.request
        result: bool = super().received(data)
        if self.request is not None and self.request is not pending:
            self.request_started = time.time()
        return result


class GuardedServer(TcpWSGIServer):  # type: ignore[misc]
    """A waitress TCP server that caps connections per client and times out slow ones."""

    channel_class = GuardedChannel

    def __init__(
        self, application: Any, *, limits: ServerLimits, open_per_client: dict[str, int], **kw: Any
    ) -> None:
        self.limits = limits
        self.open_per_client = open_per_client  # shared by the servers of one listen list
        self._refused = 0
        self._refusals_logged_at = 0.0
        super().__init__(application, **kw)
        proxy = self.adj.trusted_proxy
        self.exempt = client_key(proxy) if proxy else ""

    def handle_accept(self) -> None:
        try:
            pair = self.accept()
        except OSError:
            if self.adj.log_socket_errors:
                self.logger.warning("server accept() threw an exception", exc_info=True)
            return
        if pair is None:
            return
        conn, addr = pair
        if self._over_cap(client_key(addr[0])):
            conn.close()
            self._note_refusal()
            return
        try:
            self.set_socket_options(conn)
        except OSError:  # the client is gone already
            conn.close()
            return
        try:
            self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)
        except OSError:  # never up to the listening socket's error handler: it closes it
            conn.close()

    def opened(self, client: str) -> None:
        self.open_per_client[client] = self.open_per_client.get(client, 0) + 1

    def closed(self, client: str) -> None:
        left = self.open_per_client.get(client, 0) - 1
        if left > 0:
            self.open_per_client[client] = left
        else:
            self.open_per_client.pop(client, None)

    def maintenance(self, now: float) -> None:
        """Close idle connections (waitress), requests that take too long to arrive and
        responses nobody reads (a task blocked on a full buffer holds a thread)."""
        super().maintenance(now)
        late = now - self.limits.request_timeout
        stalled = now - self.adj.channel_timeout
        for channel in self.active_channels.values():
            if _arriving_since(channel, late):
                channel.will_close = True  # its socket is writable: closed on the next turn
            elif _unread_since(channel, stalled):
                _hang_up(channel)

    def _over_cap(self, client: str) -> bool:
        cap = self.limits.connections_per_client
        return bool(cap) and client != self.exempt and self.open_per_client.get(client, 0) >= cap

    def _note_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSALS_LOG_EVERY:
            log.warning(
                "web.connections_refused",
                extra={"refused": self._refused, "per_client": self.limits.connections_per_client},
            )
            self._refused, self._refusals_logged_at = 0, now


def _arriving_since(channel: GuardedChannel, cutoff: float) -> bool:
    """A request has been coming in since before `cutoff`, however steadily it trickles."""
    return channel.request is not None and channel.request_started < cutoff


def _unread_since(channel: GuardedChannel, cutoff: float) -> bool:
    """A response waits to be sent, and no byte went either way since `cutoff`."""
    return bool(channel.requests and channel.total_outbufs_len) and channel.last_activity < cutoff


def _hang_up(channel: GuardedChannel) -> None:
    """Reset a connection whose socket will never turn writable. The hang-up wakes the
    loop, which closes it on its own path (not here, in the middle of building its poll
    set); that wakes a task blocked on the full buffer with ClientDisconnected."""
    channel.will_close = True
    sock = channel.socket
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)


def create_guarded_server(
    app: Any, host: str, port: int, threads: int, trusted_proxy: str, limits: ServerLimits
) -> Any:
    """What `waitress.create_server` builds for TCP, from our server and channel classes:
    one `GuardedServer` per listen address, sharing one socket map and thread pool."""
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident=SERVER_IDENT,
        **proxy_options(trusted_proxy),
        **limits.adjustments(),
    )
    socket_map: dict[int, Any] = {}
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    per_client: dict[str, int] = {}
    servers = [
        GuardedServer(
            app,
            limits=limits,
            open_per_client=per_client,
            map=socket_map,
            dispatcher=dispatcher,
            adj=adj,
            sockinfo=sockinfo,
        )
        for sockinfo in adj.listen
    ]
    if len(servers) == 1:
        return servers[0]
    listening = [(server.effective_host, server.effective_port) for server in servers]
    return MultiSocketServer(socket_map, adj, listening, dispatcher, servers[-1].log_info)


def _build(
    app: Any, host: str, port: int, threads: int, trusted_proxy: str, limits: ServerLimits | None
) -> Any:
    redact_tokens_in_logs()
    fitted = fit_file_descriptors(limits or limits_for(app))
    log.info("web.limits", extra={"threads": threads, **dataclasses.asdict(fitted)})
    return create_guarded_server(app, host, port, threads, trusted_proxy, fitted)


# --- running it -------------------------------------------------------------------------


@dataclass
class BackgroundServer:
    """A waitress server on a daemon thread (`gdpr serve`, tests and benchmarks)."""

    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Close every socket from inside the server's own loop, then join its threads."""
        server = self.server

        def close_all() -> None:
            for channel in list(server._map.values()):
                if channel is not server and channel is not server.trigger:
                    channel.close()
            server.close()

        trigger = server.trigger
        # Not `trigger.pull_trigger(close_all)`: a task thread's pull may wake the loop
        # between queueing the thunk and writing to the pipe, and the thunk closes the
        # pipe. The loop runs thunks under this lock, so it waits for our write.
        with trigger.lock:
            trigger.thunks.append(close_all)
            trigger._physical_pull()
        self.thread.join(timeout=10)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def start_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    trusted_proxy: str = "",
    limits: ServerLimits | None = None,
    threads: int = defaults.SERVE_THREADS,
) -> BackgroundServer:
    """Start waitress (on an ephemeral port by default) in a daemon thread; raises
    OSError when the address cannot be bound."""
    server = _build(app, host, port, threads, trusted_proxy, limits)
    thread = threading.Thread(target=server.run, name="gdpr-web", daemon=True)
    thread.start()
    return BackgroundServer(server, thread)
