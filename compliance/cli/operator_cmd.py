"""`gdpr operator ...`: who may do what (roles agent, approver, admin), and who you are."""

from __future__ import annotations

import io

import click
import segno

from compliance import operators, otp
from compliance.cli import output
from compliance.cli.context import current, otp_option
from compliance.operators import Role

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
roles_argument = click.argument(
    "roles", nargs=-1, required=True, type=click.Choice([r.value for r in Role])
)


@click.group()
def operator() -> None:
    """Operators and their roles: agent (submit, view), approver (approve and reject
    erasures), admin (holds, keys, retention runs, suppression, operators)."""


@operator.command(name="list")
@json_option
def list_(as_json: bool) -> None:
    """Every operator with a role, and their roles."""
    grants = operators.list_operators(current().db())
    if as_json:
        output.emit_json(
            [
                {
                    "name": g.name,
                    "roles": [r.value for r in g.roles],
                    "granted_by": g.granted_by,
                    "granted_at": g.granted_at.isoformat(),
                }
                for g in grants
            ]
        )
        return
    if not grants:
        click.echo("No operators yet: `gdpr operator grant NAME admin` makes the first admin.")
    for g in grants:
        click.echo(f"{g.name:<32} {', '.join(r.value for r in g.roles)}")


@operator.command()
@click.argument("name")
@roles_argument
@otp_option
def grant(name: str, roles: tuple[str, ...]) -> None:
    """Give NAME these ROLES (admins only; on PostgreSQL the first admin is granted by the
    installation's own login, the owner of the control database)."""
    app = current()
    app.act(Role.ADMIN, "grant roles")
    by = app.acting()
    added = operators.grant(app.db(), by, name, [Role(r) for r in roles], app.now())
    target = operators.canonical(name)
    held = ", ".join(r.value for r in added) or "nothing new (it held these roles)"
    click.echo(f"{target}: granted {held}")
    sql = operators.missing_login_sql(app.db(), target)
    if sql:
        click.echo(
            f"note: {target} is no operator login of this database yet; a DBA runs: {sql}", err=True
        )


@operator.command()
@click.argument("name")
@roles_argument
@otp_option
def revoke(name: str, roles: tuple[str, ...]) -> None:
    """Take ROLES from NAME (admins only; never the last admin)."""
    app = current()
    app.act(Role.ADMIN, "revoke roles")
    by = app.acting()
    removed = operators.revoke(app.db(), by, name, [Role(r) for r in roles], app.now())
    target = operators.canonical(name)
    taken = ", ".join(r.value for r in removed) or "nothing (it held none of these)"
    click.echo(f"{target}: revoked {taken}")


@operator.command()
@json_option
def whoami(as_json: bool) -> None:
    """Who the control database takes you for, and your roles."""
    app = current()
    acting = app.acting()
    with app.db().session() as session:
        roles = sorted(r.value for r in operators.roles_of(session, acting.name))
    how = "service login" if acting.service else "claimed" if acting.claimed else "authenticated"
    if app.db().engine.dialect.name != "postgresql" and not acting.claimed:
        how = "login name"
    if as_json:
        output.emit_json({"name": acting.name, "identified_by": how, "roles": roles})
        return
    click.echo(f"{acting.name} ({how}): {', '.join(roles) or 'no roles'}")


@operator.command()
def enroll() -> None:
    """Enroll a one-time code (TOTP) for yourself: scan the QR code (or enter the secret)
    in an authenticator app, then type the code it shows. From then on approving erasures
    and admin actions need --otp CODE. Enrolling again replaces the old secret."""
    app = current()
    acting = app.acting()
    enrollment = otp.begin(acting.name)
    picture = io.StringIO()
    segno.make(enrollment.uri).terminal(out=picture, compact=True)
    click.echo(picture.getvalue())
    click.echo(enrollment.uri)
    click.echo(f"secret (to type in instead of scanning): {enrollment.secret}")
    code = click.prompt("code shown by the app", type=str)
    otp.confirm(app.db(), app.keyring(), acting, enrollment, code, app.now())
    click.echo(f"{acting.name}: enrolled; approving erasures and admin actions now need --otp CODE")


@operator.command()
@click.argument("name")
@otp_option
def unenroll(name: str) -> None:
    """Forget NAME's one-time code (a lost phone), which also ends a lockout (admins only)."""
    app = current()
    by = app.act(Role.ADMIN, "remove one-time codes")
    target = operators.canonical(name)
    otp.unenroll(app.db(), app.acting(), target, app.now())
    click.echo(f"{target}: one-time code removed; `gdpr operator enroll` sets a new one (by {by})")
