"""`gdpr db ...`, `gdpr audit ...`, `gdpr keys ...`: administration."""

from __future__ import annotations

import base64
import secrets

import click

from compliance import audit as audit_log
from compliance.cli import output
from compliance.cli.context import current
from compliance.db import current_revision, upgrade
from compliance.keyring import new_key_line


@click.group()
def db() -> None:
    """The control database."""


@db.command(name="upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (safe to run again)."""
    app = current()
    database = app.db()
    upgrade(database.engine)
    click.echo(f"control database at revision {current_revision(database.engine)}")


@db.command(name="current")
def db_current() -> None:
    """Print the schema revision of the control database."""
    click.echo(current_revision(current().db().engine) or "empty (run `gdpr db upgrade`)")


@click.group()
def audit() -> None:
    """The hash-chained audit trail."""


@audit.command(name="verify")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable result: ok, checked, broken_at, reason (exit code as without).",
)
def audit_verify(as_json: bool) -> None:
    """Check every link of the audit chain; exit 1 at the first broken one."""
    with current().db().session() as session:
        report = audit_log.verify_chain(session)
    if as_json:
        output.emit_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "broken_at": report.broken_at,
                "reason": report.reason,
            }
        )
    elif report.ok:
        click.echo(f"audit chain intact: {report.checked} events")
    else:
        click.echo(f"audit chain BROKEN at event {report.broken_at}: {report.reason}", err=True)
    if not report.ok:
        click.get_current_context().exit(1)


@click.group()
def keys() -> None:
    """Key material."""


@keys.command(name="generate")
@click.option("--key-id", default="k1", show_default=True, help="Id of the new key.")
def keys_generate(key_id: str) -> None:
    """Print a new key-encryption key and pseudonym key as environment lines.

    To rotate, append the new `id:key` to GDPR_KEYS (the last one encrypts; all decrypt).
    Never rotate GDPR_PSEUDONYM_KEY: pseudonyms would stop matching.
    """
    click.echo(f"GDPR_KEYS={new_key_line(key_id)}")
    click.echo(f"GDPR_PSEUDONYM_KEY={base64.b64encode(secrets.token_bytes(32)).decode()}")


@click.group()
def maintenance() -> None:
    """Sweeps that beat runs on schedule, on demand."""


@maintenance.command(name="sweep")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable result: the ids released and re-dispatched.",
)
def maintenance_sweep(as_json: bool) -> None:
    """Release stale claims and re-dispatch requests stuck in the queue."""
    from compliance.maintenance import sweep

    app = current()
    result = sweep(app.db(), app.settings(), app.dispatcher(), app.now())
    released, redispatched = result.released, result.redispatched
    if as_json:
        output.emit_json(
            {"released": [str(i) for i in released], "redispatched": [str(i) for i in redispatched]}
        )
    elif not released and not redispatched:
        click.echo("Nothing to do.")
    else:
        click.echo(f"released {len(released)} stale claim(s), re-dispatched {len(redispatched)}")
