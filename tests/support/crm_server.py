"""A fake third-party CRM API: a real HTTP server on 127.0.0.1 (ephemeral port), in a thread.

    GET    /subjects/{email}             -> 200 the record (JSON object), or 404
    GET    /subjects/{email}/activities  -> 200 {"data": {"items": [...]}}, or 404
    DELETE /subjects/{email}             -> 204, or 404 when there is no record
    POST   /erasures   {"email": ...}    -> 202 (deletes the record), 404 when none

Every request needs ``Authorization: Bearer <token>`` (401 otherwise). `fail()` makes
the next N requests answer 429 (with Retry-After), 500, or arrive slowly; `requests`
records (method, path, authorised) of each request for assertions.

    with CrmServer() as crm:
        crm.records["ada@example.com"] = {"email": "ada@example.com", "plan": "pro"}
        crm.url, crm.token
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


@dataclass
class Failure:
    mode: str  # "429" | "500" | "slow"
    times: int
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class CrmServer:
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    activities: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    _failures: list[Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fail(
        self, mode: str, times: int = 1, retry_after: str | None = None, delay: float = 0.0
    ) -> None:
        """Make the next `times` requests fail with `mode` ("429", "500" or "slow")."""
        with self._lock:
            self._failures.append(Failure(mode, times, retry_after, delay))

    def next_failure(self) -> Failure | None:
        with self._lock:
            if not self._failures:
                return None
            failure = self._failures[0]
            failure.times -= 1
            if failure.times <= 0:
                self._failures.pop(0)
            return failure

    def start(self) -> CrmServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> CrmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler_for(crm: CrmServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

        def do_GET(self) -> None:
            self._serve("GET")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            authorised = self.headers.get("Authorization") == f"Bearer {crm.token}"
            crm.requests.append((method, self.path, authorised))
            failure = crm.next_failure()
            if failure and failure.mode == "slow":
                time.sleep(failure.delay)
            elif failure:
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
                return self._send(int(failure.mode), {"error": "try later"}, headers)
            if not authorised:
                return self._send(401, {"error": "unauthorised"})
            status, answer = self._route(method, self.path, body)
            self._send(status, answer)

        def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
            parts = [unquote(p) for p in path.split("?")[0].strip("/").split("/")]
            if parts == ["erasures"] and method == "POST":
                email = json.loads(body or b"{}").get("email", "")
                found = crm.records.pop(email, None) is not None
                crm.activities.pop(email, None)
                return (202, {"status": "accepted"}) if found else (404, {"error": "none"})
            if len(parts) < 2 or parts[0] != "subjects":
                return 400, {"error": "bad path"}
            email = parts[1]
            if len(parts) == 3 and parts[2] == "activities" and method == "GET":
                if email not in crm.activities:
                    return 404, {"error": "none"}
                return 200, {"data": {"items": crm.activities[email]}}
            if len(parts) != 2 or email not in crm.records:
                return 404, {"error": "none"}
            if method == "GET":
                return 200, crm.records[email]
            if method == "DELETE":
                del crm.records[email]
                crm.activities.pop(email, None)
                return 204, None
            return 405, {"error": "method"}

        def _send(self, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
