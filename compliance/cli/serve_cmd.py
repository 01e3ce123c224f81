"""`gdpr serve`: run the download service on waitress, saying where it listens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from compliance.cli.context import current
from compliance.cli.worker_cmd import insecure_dev_keys_option
from compliance.errors import ConfigError, ValidationError

if TYPE_CHECKING:
    from compliance.db import Database
    from exporters.web_server import BackgroundServer


@click.command()
@click.option("--host", help="Interface to listen on (default: settings serve_host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: settings serve_port).")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    help="Worker threads (default: settings serve_threads).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics on this port, on metrics_host, never the download port"
    " (default: setting serve_metrics_port; 0: off).",
)
@insecure_dev_keys_option
def serve(
    host: str | None,
    port: int | None,
    threads: int | None,
    metrics_port: int | None,
    insecure_dev_keys: bool,
) -> None:
    """Run the download service that the emailed links point to, until Ctrl-C.

    Connection limits and timeouts come from the serve_* settings (exporters/README.md);
    in production run it behind a reverse proxy with limits of its own.
    """
    from exporters.storage import open_storage
    from exporters.web import create_app

    app = current()
    settings = app.settings()
    port = port or settings.serve_port
    metrics_port = settings.serve_metrics_port if metrics_port is None else metrics_port
    if metrics_port == port:
        raise ValidationError(
            f"--metrics-port {metrics_port} is the download port; /metrics is never served"
            " where data subjects download: choose another"
        )
    keyring = app.service_keyring(insecure_dev_keys)
    web = create_app(settings, app.db(), open_storage(settings), keyring)
    scraped = _serve_metrics(app.db(), settings.metrics_host, metrics_port) if metrics_port else ""
    server = _start(
        web,  # carries its connection limits and timeouts (ServerLimits) from the settings
        host or settings.serve_host,
        port,
        threads=threads or settings.serve_threads,
        trusted_proxy=settings.trusted_proxy,
    )
    announce(
        server, settings.download_base_url, configured=bool(settings.base_url), metrics=scraped
    )
    try:
        while server.thread.is_alive():
            server.thread.join(timeout=1.0)
    except KeyboardInterrupt:
        click.echo("stopping the download service")
    finally:
        if server.thread.is_alive():
            _stop(server)


def _serve_metrics(db: Database, host: str, port: int) -> str:
    """Start /metrics (on a port of its own); where it answers."""
    from compliance import metrics

    exposed = metrics.Exposed(metrics.RequestGauges(db))
    metrics.serve(exposed, host, port, what="--metrics-port", env="GDPR_SERVE_METRICS_PORT")
    return metrics.endpoint(host, port)


def announce(
    server: BackgroundServer, base_url: str, *, configured: bool, metrics: str = ""
) -> None:
    """Where the service listens, what it serves, where the emailed links point, where its
    metrics are (if served), how to stop."""
    addresses = listening(server)
    for address in addresses:
        click.echo(f"gdpr download service listening on {address}")
    click.echo("  serves the download links mailed to data subjects (/d/<token>) and /healthz")
    elsewhere = not configured and base_url not in addresses
    hint = "; not this address: set GDPR_BASE_URL" if elsewhere else " (setting base_url)"
    click.echo(f"  links in emails point at {base_url}{hint}")
    if metrics:
        click.echo(f"  metrics (Prometheus) on {metrics}")
    click.echo("  press Ctrl-C to stop")


def _start(app: Any, host: str, port: int, *, threads: int, trusted_proxy: str) -> BackgroundServer:
    from exporters.web_server import start_in_thread

    try:
        return start_in_thread(app, host, port, trusted_proxy=trusted_proxy, threads=threads)
    except OSError as exc:  # port taken, unknown host, an address this machine does not have
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"cannot listen on {host}:{port}: {reason}; choose another with --host/--port "
            "or GDPR_SERVE_HOST/GDPR_SERVE_PORT"
        ) from exc


def listening(server: BackgroundServer) -> list[str]:
    """The URLs the server listens on (one per socket; several when a host name resolves
    to more than one address)."""
    found = getattr(server.server, "effective_listen", None) or [
        (server.server.effective_host, server.server.effective_port)
    ]
    return [_url(str(host), int(port)) for host, port in found]


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _stop(server: BackgroundServer) -> None:
    from waitress.server import BaseWSGIServer

    if isinstance(server.server, BaseWSGIServer):
        server.stop()
    # several sockets (MultiSocketServer): its daemon threads end with the process
