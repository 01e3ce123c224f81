"""A Slack-compatible incoming webhook: a real HTTP server on 127.0.0.1 (ephemeral port),
in a thread. Each POST's JSON ``text`` is kept in `texts`; `fail(status)` makes it answer
that status, `slow(seconds)` makes it wait that long before answering.

    with WebhookServer() as hook:
        hook.url, hook.texts
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookServer:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.status = 200
        self.delay = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/T000/B000/secret"

    def fail(self, status: int = 500) -> None:
        self.status = status

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    def heal(self) -> None:
        self.status, self.delay = 200, 0.0

    def __enter__(self) -> WebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if owner.delay:
                    time.sleep(owner.delay)
                if owner.status != 200:
                    self.send_response(owner.status)
                    self.end_headers()
                    return
                text = json.loads(body)["text"]
                with owner._lock:
                    owner.texts.append(text)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
