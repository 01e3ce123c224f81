"""`gdpr alerts check | test`: evaluate the alert conditions now; try every channel."""

from __future__ import annotations

from collections.abc import Sequence

import click

from compliance.alerts import channels
from compliance.alerts.check import AlertContext, CheckResult, check, send_test
from compliance.cli import output
from compliance.cli.context import App, current
from compliance.operators import Role
from compliance.retention.report import PolicyReport

NO_CHANNEL = "no alert channel is configured: set GDPR_ALERT_EMAIL_TO or GDPR_ALERT_WEBHOOK_URL"


@click.group()
def alerts() -> None:
    """Alerts by email and webhook: one per condition until it clears, a daily digest."""


@alerts.command(name="check")
@click.option("--dry-run", is_flag=True, help="Show what would be raised, cleared and sent.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check_cmd(dry_run: bool, as_json: bool) -> None:
    """Evaluate every condition now (beat does it every ALERT_EVERY_SECONDS); exit 1 if
    a channel failed (its alerts stay pending for the next check)."""
    app = current()
    if not dry_run:
        app.act(Role.AGENT, "check alerts")
    found = check(context(app), dry_run=dry_run)
    if as_json:
        output.emit_json(found.to_dict())
    else:
        _show(found)
    if found.failed:
        raise SystemExit(1)


@alerts.command(name="test")
def test_cmd() -> None:
    """Send one test alert to every configured channel; exit 1 naming any that failed."""
    app = current()
    configured = channels.configured(app.settings())
    if not configured:
        click.echo(NO_CHANNEL)
        return
    failed = []
    for name, error in send_test(configured, app.now()):
        click.echo(f"{name}: {'sent' if error is None else 'FAILED: ' + error}")
        if error is not None:
            failed.append(name)
    if failed:
        click.echo(f"error: the {', '.join(failed)} channel failed", err=True)
        raise SystemExit(1)


def context(app: App) -> AlertContext:
    settings = app.settings()
    return AlertContext(
        settings=settings,
        db=app.db(),
        channels=channels.configured(settings),
        now=app.now(),
        retention=lambda: _retention(app),
    )


def _retention(app: App) -> Sequence[PolicyReport]:
    from compliance.cli.retention_cmd import context as retention_context
    from compliance.retention.report import report

    return report(retention_context(app, actor=app.operator()))


def _show(found: CheckResult) -> None:
    verb = "would " if found.dry_run else ""
    if not found.channels:
        click.echo(NO_CHANNEL)
    for notice in found.raised:
        click.echo(f"{verb}raise: {notice.title}")
    for notice in found.cleared:
        click.echo(f"{verb}clear: {notice.title.removeprefix('cleared: ')}")
    if found.digest:
        click.echo(f"{verb}send the {found.digest.title}")
    click.echo(f"raised now: {len(found.open)}" + "".join(f"\n  {t}" for t in found.open))
    for channel, title in found.sent:
        click.echo(f"{'would send' if found.dry_run else 'sent'} by {channel}: {title}")
    for _channel, error in found.failed:
        click.echo(f"error: {error} (kept for the next check)", err=True)
    for problem in found.problems:
        click.echo(f"not checked: {problem}")
