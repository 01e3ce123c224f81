"""Running the download service on waitress, in the foreground or in a background thread.

Waitress logs the request path when something fails mid-response; our paths hold
download tokens, so `redact_tokens_in_logs` rewrites ``/d/<anything>`` in every record of
the waitress loggers before a handler sees it.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from waitress import create_server
from waitress.server import BaseWSGIServer

TOKEN_IN_PATH = re.compile(r"/d/[^\s/?#\"']+")
REDACTED = "/d/<token>"
SERVER_IDENT = "gdpr"
_LOGGERS = ("waitress", "waitress.queue")


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


def serve(app: Any, host: str, port: int, threads: int = 8, trusted_proxy: str = "") -> None:
    """Serve `app` until interrupted."""
    redact_tokens_in_logs()
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident=SERVER_IDENT,
        **proxy_options(trusted_proxy),
    )
    server.print_listen("gdpr download service listening on http://{}:{}")
    server.run()


@dataclass
class BackgroundServer:
    """A waitress server on a thread; for tests and benchmarks."""

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

        server.trigger.pull_trigger(close_all)
        self.thread.join(timeout=10)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


def start_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, trusted_proxy: str = ""
) -> BackgroundServer:
    """Start waitress on an ephemeral port (by default) in a daemon thread."""
    redact_tokens_in_logs()
    server = create_server(
        app, host=host, port=port, threads=8, ident=SERVER_IDENT, **proxy_options(trusted_proxy)
    )
    thread = threading.Thread(target=server.run, name="gdpr-web", daemon=True)
    thread.start()
    return BackgroundServer(server, thread)
