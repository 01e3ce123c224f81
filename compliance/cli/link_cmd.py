"""`gdpr link ...`: reissue or revoke the download links of an export request."""

from __future__ import annotations

import click

from compliance.cli import output
from compliance.cli.context import current
from compliance.operators import Role
from compliance.requests import parse_request_id

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def link() -> None:
    """Download links of export requests."""


@link.command()
@click.argument("request_id")
@json_option
def reissue(request_id: str, as_json: bool) -> None:
    """Revoke REQUEST_ID's links and print a new one to hand to the subject."""
    from exporters import links

    app = current()
    rid = parse_request_id(request_id)
    settings = app.settings()
    actor = app.act(Role.AGENT, "reissue download links")
    with app.db().session() as session:
        token = links.reissue(session, rid, settings, app.now(), actor=actor)
        issued = links.find_link(session, token)
        assert issued is not None
        expires_at, max_downloads = issued.expires_at, issued.max_downloads
    url = links.link_url(settings, token)
    if as_json:
        output.emit_json(
            {
                "request_id": str(rid),
                "url": url,
                "expires_at": expires_at.isoformat(),
                "max_downloads": max_downloads,
            }
        )
        return
    click.echo(url)
    click.echo(
        f"valid until {expires_at:%Y-%m-%d %H:%M} UTC for {max_downloads} download(s); "
        "earlier links are revoked. Hand it over on a channel only the subject reads.",
        err=True,
    )


@link.command()
@click.argument("request_id")
@json_option
def revoke(request_id: str, as_json: bool) -> None:
    """Revoke every link of REQUEST_ID at once."""
    from exporters import links

    app = current()
    rid = parse_request_id(request_id)
    actor = app.act(Role.AGENT, "revoke download links")
    with app.db().session() as session:
        count = links.revoke(session, rid, app.now(), actor=actor)
    if as_json:
        output.emit_json({"request_id": str(rid), "revoked": count})
    elif count:
        click.echo(f"revoked {count} link(s) of request {rid}")
    else:
        click.echo(f"Nothing to revoke: request {rid} has no active links.")
