"""`gdpr serve` says where it listens and how to stop it, answers there, and refuses a
port that is taken in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.services import free_port

GDPR = str(Path(sys.executable).with_name("gdpr"))


def serve_env(home: Path) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
    return {**kept, "GDPR_HOME": str(home)}


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_prints_its_address_answers_there_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [GDPR, "serve", "--port", str(port)],
        env=serve_env(tmp_path / ".gdpr"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        announced = [first, *(server.stdout.readline() for _ in range(3))]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
        server.send_signal(signal.SIGINT)
        rest, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert first.strip() == f"gdpr download service listening on http://127.0.0.1:{port}"
    assert "download links mailed to data subjects" in announced[1]
    # no base_url set and not on the default port: the links would point elsewhere
    assert announced[2].strip() == (
        "links in emails point at http://127.0.0.1:8080; not this address: set GDPR_BASE_URL"
    )
    assert "Ctrl-C" in announced[3]
    assert "stopping" in rest
    assert server.returncode == 0


def test_serve_on_a_taken_port_is_refused_in_one_line_with_exit_5(
    tmp_path: Path, taken_port: int
) -> None:
    done = subprocess.run(
        [GDPR, "serve", "--port", str(taken_port)],
        env=serve_env(tmp_path / ".gdpr"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 5
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot listen on 127.0.0.1:{taken_port}: Address already in use; choose "
        "another with --host/--port or GDPR_SERVE_HOST/GDPR_SERVE_PORT"
    ]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("base_url", "configured", "expected"),
    [
        ("https://privacy.example.com", True, "https://privacy.example.com (setting base_url)"),
        (None, False, "{here} (setting base_url)"),
    ],
    ids=["behind-a-proxy", "default-on-this-address"],
)
def test_serve_says_where_the_emailed_links_point(
    capsys: pytest.CaptureFixture[str], base_url: str | None, configured: bool, expected: str
) -> None:
    from compliance.cli.serve_cmd import announce
    from exporters.web_server import start_in_thread

    def hello(environ: object, start_response: Callable[..., object]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = start_in_thread(hello)
    try:
        announce(server, base_url or server.url, configured=configured)
    finally:
        server.stop()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"gdpr download service listening on {server.url}"
    assert lines[2].strip() == "links in emails point at " + expected.format(here=server.url)


@pytest.mark.slow
def test_serve_counts_a_refused_token_on_its_own_metrics_port(tmp_path: Path) -> None:
    import re
    import secrets
    import urllib.error

    port, metrics_port = free_port(), free_port()
    server = subprocess.Popen(
        [GDPR, "serve", "--port", str(port), "--metrics-port", str(metrics_port)],
        env=serve_env(tmp_path / ".gdpr"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        announced = [server.stdout.readline() for _ in range(5)]
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/d/{secrets.token_urlsafe(32)}")
        gone.value.close()
        assert gone.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as public:  # never on the download port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics")
        public.value.close()
        assert public.value.code == 404
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            scraped = answer.read().decode()
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    assert announced[3] == f"  metrics (Prometheus) on {url}\n"  # before "Ctrl-C"
    assert "Ctrl-C" in announced[4]
    found = re.search(r'^gdpr_download_refusals_total\{reason="unknown"\} (\S+)$', scraped, re.M)
    assert found is not None and float(found.group(1)) == 1
    assert 'gdpr_requests{kind="export",status="completed"} 0.0' in scraped


def test_serve_refuses_metrics_on_the_download_port_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [GDPR, "serve", "--port", "8181", "--metrics-port", "8181"],
        env=serve_env(tmp_path / ".gdpr"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --metrics-port 8181 is the download port; /metrics is never served where data"
        " subjects download: choose another"
    ]
