"""`gdpr db ...`, `gdpr keys ...`, `gdpr maintenance ...`: administration."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping

import click

from compliance import rotation
from compliance.cli import output
from compliance.cli.context import App, current, otp_option
from compliance.db import current_revision, upgrade
from compliance.keyring import new_key_line
from compliance.operators import Role


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
def keys() -> None:
    """Key material."""


@keys.command(name="generate")
@click.option("--key-id", default="k1", show_default=True, help="Id of the new key.")
def keys_generate(key_id: str) -> None:
    """Print a new key-encryption key and pseudonym key as environment lines.

    To rotate, append the new `id:key` last to GDPR_KEYS (the last one encrypts; all
    decrypt), restart the services, then run `gdpr keys rotate`.
    Never rotate GDPR_PSEUDONYM_KEY: pseudonyms would stop matching.
    """
    click.echo(f"GDPR_KEYS={new_key_line(key_id)}")
    click.echo(f"GDPR_PSEUDONYM_KEY={base64.b64encode(secrets.token_bytes(32)).decode()}")


@keys.command(name="status")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable: per key id, its role and what it protects (exit code as without).",
)
def keys_status(as_json: bool) -> None:
    """Per key id: newest / primary, and how many export packages, sealed identity values
    and retention cursors it protects. Exit 1 when something is protected by a key id
    missing from the keyring."""
    status = _status(current())
    if as_json:
        output.emit_json(status.to_dict())
    else:
        _show_status(status)
    if status.missing:
        click.get_current_context().exit(1)


@keys.command(name="rotate")
@click.option(
    "--dry-run", is_flag=True, help="Count what would move to the newest key; change nothing."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=rotation.BATCH,
    show_default=True,
    help="Rows (or packages) per batch; each batch is committed on its own.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable counts.")
@otp_option
def keys_rotate(dry_run: bool, batch_size: int, as_json: bool) -> None:
    """Move everything to the newest key of GDPR_KEYS: seal identity values and retention
    cursors again, and re-wrap export packages' data keys (never their contents). Add the
    new key last to GDPR_KEYS everywhere first. Safe to stop and run again; audited.
    Exit 1 when some value could not be opened (see `gdpr keys status`)."""
    app = current()
    live = None if as_json else output.LiveLine(tty=output.is_tty())

    def progress(what: str, counts: Mapping[str, int]) -> None:
        if live is not None:
            live.show(f"{what}: {counts.get(what, 0)} moved to the newest key")

    try:
        report = rotation.rotate(
            app.db(),
            app.keyring(),
            _rewrapper(app),
            actor=app.act(Role.ADMIN, "rotate keys"),
            clock=app.now,
            batch=batch_size,
            dry_run=dry_run,
            progress=progress,
        )
    finally:
        if live is not None:
            live.close()
    status = _status(app)
    if as_json:
        output.emit_json({**report.to_dict(), "status": status.to_dict()})
    else:
        _show_rotation(report)
        _show_advice(status)
    if report.unreadable:
        click.get_current_context().exit(1)


def _status(app: App) -> rotation.KeyStatus:
    settings, keyring = app.settings(), app.keyring()
    primary = f"{rotation.KMS_PREFIX}{settings.kms_key_id}" if settings.kms_key_id else ""
    return rotation.key_status(app.db(), keyring, primary_id=primary or keyring.newest_id)


def _rewrapper(app: App) -> rotation.PackageRewrap:
    from exporters.rewrap import PackageRewrapper
    from exporters.storage import open_storage
    from exporters.wrapping import keyring_wrapper, wrapper_for

    settings, keyring = app.settings(), app.keyring()
    return PackageRewrapper(
        app.db(),
        open_storage(settings),
        unwrapper=wrapper_for(settings, keyring),
        wrapper=keyring_wrapper(keyring),
    )


def _role(use: rotation.KeyUse) -> str:
    roles = [name for name, on in (("newest", use.newest), ("primary", use.primary)) if on]
    if not use.in_keyring:
        roles.append("KMS" if use.key_id.startswith(rotation.KMS_PREFIX) else "NOT IN KEYRING")
    return ", ".join(roles) or "old"


def _show_status(status: rotation.KeyStatus) -> None:
    rows = [{**use.to_dict(), "key": use.key_id, "role": _role(use)} for use in status.keys]
    output.table(rows, ["key", "role", "packages", "identities", "cursors"])
    _show_advice(status)


def _show_advice(status: rotation.KeyStatus) -> None:
    for use in status.keys:
        if use.removable:
            click.echo(f"key '{use.key_id}' protects nothing: it can be removed from GDPR_KEYS")
        elif use.in_keyring and not use.newest and use.protected:
            click.echo(f"key '{use.key_id}' still protects {use.protected}: run `gdpr keys rotate`")
    for use in status.missing:
        click.echo(
            f"key '{use.key_id}' is not in the keyring but protects {use.protected}:"
            " add it back to GDPR_KEYS",
            err=True,
        )
    if status.development:
        click.echo("development keyring: set GDPR_KEYS for production", err=True)


_SAID = {
    "identities_changed_meanwhile": "identity value(s) changed meanwhile (left as they are)",
    "cursors_changed_meanwhile": "retention cursor(s) changed meanwhile (left as they are)",
    "identities_unreadable": "identity value(s) could not be opened",
    "cursors_unreadable": "retention cursor(s) could not be opened",
    "packages_unreadable": "package(s) could not be opened (tampered, or key missing)",
    "packages_expiring": "package(s) expire within the hour: left to the expiry sweep",
    "packages_missing": "package(s) missing from storage",
    "packages_reconciled": "package(s) re-wrapped by an earlier run, now on record",
    "packages_deleted_meanwhile": "package(s) deleted meanwhile (expiry or erasure)",
    "packages_changed_meanwhile": "package(s) re-wrapped by another run meanwhile",
}


def _show_rotation(report: rotation.RotationReport) -> None:
    counts = report.counts
    moved = (
        f"{counts.get('identities', 0)} identity value(s), "
        f"{counts.get('cursors', 0)} retention cursor(s) and "
        f"{counts.get('packages', 0)} package(s)"
    )
    if report.dry_run:
        click.echo(f"would move {moved} to key '{report.key_id}' (dry run: nothing changed)")
    elif not report.changed and not any(counts.values()):
        click.echo(f"Nothing to do: everything is under key '{report.key_id}'.")
    else:
        click.echo(f"moved {moved} to key '{report.key_id}'")
    for name, said in _SAID.items():
        if counts.get(name):
            click.echo(f"  {counts[name]} {said}")


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
@otp_option
def maintenance_sweep(as_json: bool) -> None:
    """Release stale claims and re-dispatch requests stuck in the queue (beat does it every
    few minutes). With PostgreSQL it makes the workers' transitions: run it as the
    installation's own login, the one the workers use."""
    from compliance.maintenance import sweep

    app = current()
    app.act(Role.ADMIN, "run the maintenance sweep")
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
