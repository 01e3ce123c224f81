"""`gdpr`: the entry point. Every error is one line on stderr with an exit code.

Exit codes (the README's table): 0 ok (including "nothing to do"), 1 the check or job
failed, 2 bad input, 3 not found, 4 not allowed in the current state, 5 configuration or
manifest error, 6 a service is unavailable (try again), 7 integrity check failed.

`ComplianceError`s map to codes by `EXIT_CODES`; click's own usage errors (an unknown
option, a value out of range, a missing argument) are one line with exit 2 too, with
anything shaped like an email address or phone number blanked out of what they echo.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from compliance import errors
from compliance.cli.context import App
from compliance.cli.output import one_line
from compliance.freetext import redact
from compliance.logs import configure_logging

EXIT_CODES: list[tuple[type[errors.ComplianceError], int]] = [
    (errors.ValidationError, 2),
    (errors.NotFoundError, 3),
    (errors.StateError, 4),
    (errors.PermissionDeniedError, 4),
    (errors.LegalHoldError, 4),
    (errors.ConfigError, 5),
    (errors.RetryableError, 6),
    (errors.IntegrityError, 7),
    (errors.TokenError, 7),
]

# Command modules register themselves here (one place): module path -> attribute.
COMMANDS = [
    ("compliance.cli.request_cmd", "request"),
    ("compliance.cli.admin_cmd", "db"),
    ("compliance.cli.audit_cmd", "audit"),
    ("compliance.cli.admin_cmd", "keys"),
    ("compliance.cli.admin_cmd", "maintenance"),
    ("compliance.cli.worker_cmd", "worker"),
    ("compliance.cli.worker_cmd", "beat"),
    ("compliance.cli.sources_cmd", "sources"),
    ("compliance.cli.retention_cmd", "retention"),
    ("compliance.cli.hold_cmd", "hold"),
    ("compliance.cli.export_cmd", "export"),
    ("compliance.cli.link_cmd", "link"),
    ("compliance.cli.serve_cmd", "serve"),
    ("compliance.cli.doctor_cmd", "doctor_"),
    ("compliance.cli.suppression_cmd", "suppression"),
    ("compliance.cli.operator_cmd", "operator"),
    ("compliance.cli.alerts_cmd", "alerts"),
]


def exit_code_for(exc: errors.ComplianceError) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return 1


class OneLineError(click.ClickException):
    """A click error (usage or other) shown as one `error: ...` line, same exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        vars(self)["exit_code"] = exit_code  # click declares it per class; this one varies

    @classmethod
    def of(cls, exc: click.ClickException) -> OneLineError:
        message = one_line(redact(exc.format_message())).rstrip(".")
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            message += f" (see `{ctx.command_path} --help`)"
        return cls(message, exc.exit_code)

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class GdprGroup(click.Group):
    """Turns `ComplianceError` into `error: <message>` on stderr and a meaningful exit
    code, and click's errors into one line (`OneLineError`)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.ComplianceError as exc:
            click.echo(f"error: {one_line(str(exc))}", err=True)
            ctx.exit(exit_code_for(exc))
        except click.ClickException as exc:
            raise _one_line(exc) from None


def _one_line(exc: click.ClickException) -> OneLineError:
    return exc if isinstance(exc, OneLineError) else OneLineError.of(exc)


@click.group(cls=GdprGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Settings file (default: ./gdpr.toml if present; env GDPR_CONFIG).",
)
@click.option(
    "--operator",
    help="Embedded database only: act as NAME, recorded as claimed (default: GDPR_OPERATOR or"
    " the login name). With PostgreSQL you act as your database login.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, operator: str | None, verbose: int) -> None:
    """Data-subject requests for GDPR: export (Art. 15/20) and erasure (Art. 17)."""
    configure_logging(verbose)
    app = ctx.ensure_object(App)
    app.config_file = config_file
    app.operator_override = operator
    ctx.call_on_close(app.close)


def _register() -> None:
    for module_name, attr in COMMANDS:
        cli.add_command(getattr(importlib.import_module(module_name), attr))


_register()


def main() -> None:
    sys.exit(cli.main(prog_name="gdpr"))
