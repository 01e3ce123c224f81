"""`gdpr serve`: run the download service on waitress."""

from __future__ import annotations

import click

from compliance.cli.context import current


@click.command()
@click.option("--host", help="Interface to listen on (default: settings serve_host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: settings serve_port).")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    help="Worker threads (default: settings serve_threads).",
)
def serve(host: str | None, port: int | None, threads: int | None) -> None:
    """Run the download service that the emailed links point to.

    Connection limits and timeouts come from the serve_* settings (exporters/README.md);
    in production run it behind a reverse proxy with limits of its own.
    """
    from exporters.storage import open_storage
    from exporters.web import create_app
    from exporters.web_server import serve as run_server

    app = current()
    settings = app.settings()
    web = create_app(settings, app.db(), open_storage(settings), app.keyring())
    run_server(
        web,  # carries its connection limits and timeouts (ServerLimits) from the settings
        host or settings.serve_host,
        port or settings.serve_port,
        threads=threads or settings.serve_threads,
        trusted_proxy=settings.trusted_proxy,
    )
