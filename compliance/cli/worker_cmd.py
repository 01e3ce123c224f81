"""`gdpr worker` and `gdpr beat`: run Celery with the project's app and settings.

A worker checks the sources manifest against the live systems before Celery starts:
a manifest error is one line on stderr and exit code 5, never a worker that starts and
then fails every request. A source that is merely unreachable is a warning: requests
that need it wait and retry, as they would if it went down later.
"""

from __future__ import annotations

import click

from compliance.cli.context import App, current
from compliance.cli.output import one_line
from compliance.config import Settings
from compliance.errors import ConfigError, RetryableError

ALL_QUEUES = "requests,retention,maintenance"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

loglevel_option = click.option(
    "--loglevel",
    "-l",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Celery's log level.",
)

insecure_dev_keys_option = click.option(
    "--insecure-dev-keys",
    is_flag=True,
    help="Run on the development keyring with a PostgreSQL control database (never in production).",
)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--queues",
    "-Q",
    default=ALL_QUEUES,
    show_default=True,
    callback=lambda _ctx, _param, value: _queues(value),
    help="Comma-separated queues to consume.",
)
@click.option("--beat", "with_beat", is_flag=True, help="Also run the beat scheduler (one host).")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics on this port, on metrics_host (default: setting"
    " metrics_port; 0: off).",
)
@insecure_dev_keys_option
@loglevel_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int,
    queues: str,
    with_beat: bool,
    metrics_port: int | None,
    insecure_dev_keys: bool,
    loglevel: str,
    celery_args: tuple[str, ...],
) -> None:
    """Start a Celery worker (extra arguments go to Celery)."""
    from tasks.app import configure
    from tasks.runtime import accept_development_keys

    settings = current().settings()
    port = settings.metrics_port if metrics_port is None else metrics_port
    current().service_keyring(insecure_dev_keys)
    if insecure_dev_keys:
        accept_development_keys()
    check_sources(current())
    if port:
        from compliance.metrics import endpoint
        from tasks.metrics import serve_worker_metrics

        serve_worker_metrics(settings, current().db(), port)
        click.echo(f"metrics: {endpoint(settings.metrics_host, port)}")
    app = configure(settings)
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
        prepare_beat(current().settings())
        argv.append("-B")
    app.worker_main(argv)


def _queues(text: str) -> str:
    """`text` if it names only known queues, else a one-line usage error."""
    known = ALL_QUEUES.split(",")
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown queue {unknown[0]!r}; use some of {ALL_QUEUES}", param_hint="'--queues'"
        )
    return ",".join(names)


def prepare_beat(settings: Settings) -> None:
    """Create the folder beat keeps its schedule file in (or refuse in one line), and
    print the schedule."""
    from tasks.schedule import describe

    try:
        settings.home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {settings.home} for beat's schedule file ({exc.strerror});"
            " set GDPR_HOME to a writable folder"
        ) from None
    for line in describe(settings):
        click.echo(f"beat: {line}")


def check_sources(app: App) -> None:
    """Load the manifest with live checks, then release it: the worker's processes load
    their own after fork. A `ConfigError` (the manifest is wrong) propagates."""
    try:
        app.registry(connect=True)
    except RetryableError as exc:
        click.echo(f"warning: {one_line(str(exc))}; starting anyway", err=True)
    finally:
        app.close_registry()


@click.command(context_settings={"ignore_unknown_options": True})
@loglevel_option
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Start Celery beat: maintenance sweeps, package expiry, the nightly retention
    sweep (`retention_cron`, in `timezone`) and, if `suppression_cron` is set, the
    suppression list reapplied, on schedule."""
    from tasks.app import configure

    settings = current().settings()
    prepare_beat(settings)
    app = configure(settings)
    app.start(["beat", "-l", loglevel, *celery_args])
