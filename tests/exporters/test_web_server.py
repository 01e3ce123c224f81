"""How waitress, as `exporters.web_server` builds it, sends a large streamed response:
large chunks are sent from where they are, in order, and whatever one send could not
take goes out while the app is still working on its next chunk."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from exporters.web_server import QueuedBytes, start_in_thread

MIB = 1 << 20


def read_response(port: int, path: str, pause_every: int = 0) -> tuple[bytes, bytes]:
    """(headers, body) of a GET read to the end over a socket; with `pause_every`, the
    reader sleeps a little after each that many bytes (a slow client)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        received = bytearray()
        since_pause = 0
        while data := sock.recv(256 * 1024):
            received += data
            since_pause += len(data)
            if pause_every and since_pause >= pause_every:
                time.sleep(0.01)
                since_pause = 0
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return head, body


def streaming_app(chunks: list[bytes], pause: threading.Event | None = None) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        size = sum(len(chunk) for chunk in chunks)
        start_response("200 OK", [("Content-Length", str(size))])
        for index, chunk in enumerate(chunks):
            if pause is not None and index == 1:
                pause.wait(10)  # the app busy with its next chunk
            yield chunk

    return app


def test_chunks_of_every_size_arrive_whole_and_in_order_at_a_slow_reader() -> None:
    sizes = [5, 64 * 1024 - 1, 64 * 1024, 3, MIB, 3 * MIB + 7, 1, 6 * MIB, 100]
    chunks = [os.urandom(size) for size in sizes]  # 10 MiB: past the 4 MiB output watermark
    server = start_in_thread(streaming_app(chunks))
    try:
        head, body = read_response(server.port, "/", pause_every=2 * MIB)
    finally:
        server.stop()
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Transfer-Encoding" not in head
    assert body == b"".join(chunks)


def test_what_one_send_could_not_take_goes_out_while_the_app_works_on() -> None:
    first = os.urandom(16 * MIB)  # more than the socket buffers take in one send
    pause = threading.Event()
    server = start_in_thread(streaming_app([first, b"end"], pause))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = bytearray()
            while len(received) < len(first):  # times out if the rest waits for the app
                received += sock.recv(MIB)
            pause.set()
            while not received.endswith(b"end"):
                received += sock.recv(MIB)
    finally:
        pause.set()
        server.stop()
    assert bytes(received).partition(b"\r\n\r\n")[2] == first + b"end"


def test_pipelined_requests_get_their_large_responses_in_order() -> None:
    bodies = {"/a": os.urandom(6 * MIB), "/b": os.urandom(5 * MIB + 3)}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        body = bodies[environ["PATH_INFO"]]
        start_response("200 OK", [("Content-Length", str(len(body)))])
        for at in range(0, len(body), MIB):
            yield body[at : at + MIB]

    server = start_in_thread(app)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            received = bytearray()
            while data := sock.recv(MIB):
                received += data
    finally:
        server.stop()
    first_head, _, rest = bytes(received).partition(b"\r\n\r\n")
    first, second = rest[: len(bodies["/a"])], rest[len(bodies["/a"]) :]
    assert first_head.startswith(b"HTTP/1.1 200 OK") and first == bodies["/a"]
    assert second.partition(b"\r\n\r\n")[2] == bodies["/b"]


def test_a_queued_chunk_hands_out_what_is_left_without_copying() -> None:
    data = bytes(range(256)) * 4
    queued = QueuedBytes(data)
    assert len(queued) == 1024
    view = queued.get(100)
    assert view.obj is data and bytes(view) == data[:100]
    assert len(queued) == 1024  # get without skip leaves it queued
    queued.skip(1000)
    assert bytes(queued.get()) == data[1000:]
    assert bytes(queued.get(10, skip=True)) == data[1000:1010]
    assert len(queued) == 14
    queued.close()
    assert len(queued) == 0
