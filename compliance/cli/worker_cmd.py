"""`gdpr worker` and `gdpr beat`: run Celery with the project's app and settings."""

from __future__ import annotations

import click

from compliance.cli.context import current

ALL_QUEUES = "requests,retention,maintenance"


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--queues", "-Q", default=ALL_QUEUES, show_default=True)
@click.option("--beat", "with_beat", is_flag=True, help="Also run the beat scheduler (one host).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int, queues: str, with_beat: bool, loglevel: str, celery_args: tuple[str, ...]
) -> None:
    """Start a Celery worker (extra arguments go to Celery)."""
    from tasks.app import configure

    app = configure(current().settings())
    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "--without-mingle",
        "--without-gossip",
        *celery_args,
    ]
    if with_beat:
        argv.append("-B")
    app.worker_main(argv)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Start Celery beat: maintenance sweeps and package expiry on schedule."""
    from tasks.app import configure

    settings = current().settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    app = configure(settings)
    app.start(["beat", "-l", loglevel, *celery_args])
