"""`gdpr request ...`: submit, approve, reject, cancel, retry, extend, list, show, plan."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import click

from compliance import defaults, queries
from compliance import requests as service
from compliance.cli import output, request_view, watch
from compliance.cli.context import App, current, otp_option
from compliance.cli.identity_options import (
    contact_from,
    contact_option,
    identities_from,
    identity_options,
)
from compliance.models import RequestKind, RequestStatus
from compliance.operators import Role

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def request() -> None:
    """Submit and manage data-subject requests."""


def _submit(kind: RequestKind, options: dict[str, Any]) -> None:
    app = current()
    as_json = options.pop("as_json")
    contact = contact_from(options)
    submission = service.Submission(
        kind=kind,
        contact=contact,
        identities=identities_from(options),
        ticket=options.get("ticket"),
        note=options.get("note"),
        dry_run=options.get("dry_run", False),
    )
    created = service.submit(
        app.db(),
        app.settings(),
        app.keyring(),
        submission,
        sources=app.registry(connect=False),  # the manifest says who answers what
        operator=app.act(Role.AGENT, "submit requests"),
        now=app.now(),
        dispatcher=app.dispatcher(),
    )
    if as_json:
        output.emit_json(queries.describe(created))
        return
    click.echo(f"{kind.value} request {created.id} {output.status(created.status)}")
    if created.status == RequestStatus.AWAITING_APPROVAL:
        click.echo(f"next: a second operator runs `gdpr request approve {created.id}`")


def _submit_command(kind: RequestKind, help_text: str) -> click.Command:
    @identity_options
    @contact_option
    @click.option(
        "--ticket",
        help="Your ticket/reference; no personal data (refused if it looks like an email,"
        " a phone number or one of the subject's ids).",
    )
    @click.option(
        "--note",
        help="Verification note: how the subject's identity was checked; no personal data.",
    )
    @click.option("--dry-run", is_flag=True, help="Plan only: report counts, change nothing.")
    @json_option
    def command(**options: Any) -> None:
        _submit(kind, options)

    command.__doc__ = help_text
    name = "erase" if kind == RequestKind.ERASURE else "export"
    return click.command(name=name, short_help=help_text)(command)


request.add_command(_submit_command(RequestKind.EXPORT, "Submit an export (Art. 15/20)."))
request.add_command(_submit_command(RequestKind.ERASURE, "Submit an erasure (Art. 17)."))


def _id(text: str) -> uuid.UUID:
    return service.parse_request_id(text)


def _done(app: App, request_id: uuid.UUID, as_json: bool, verb: str) -> None:
    found, steps, _ = queries.show(app.db(), request_id)
    if as_json:
        output.emit_json(queries.describe(found, steps))
    elif verb == found.status:
        click.echo(f"request {found.id} {output.status(found.status)}")
    else:
        click.echo(f"request {found.id} {verb}: {output.status(found.status)}")


@request.command()
@click.argument("request_id")
@json_option
@otp_option
def approve(request_id: str, as_json: bool) -> None:
    """Approve a request (erasure needs a second operator)."""
    app = current()
    rid = _id(request_id)
    service.approve(
        app.db(),
        app.settings(),
        rid,
        operator=app.act(Role.APPROVER, "approve erasures"),
        now=app.now(),
        dispatcher=app.dispatcher(),
    )
    _done(app, rid, as_json, "approved")


@request.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="Why (kept with the request; no personal data).")
@json_option
@otp_option
def reject(request_id: str, reason: str, as_json: bool) -> None:
    """Reject a request awaiting approval."""
    app = current()
    rid = _id(request_id)
    service.reject(
        app.db(),
        rid,
        operator=app.act(Role.APPROVER, "reject requests"),
        reason=reason,
        now=app.now(),
    )
    _done(app, rid, as_json, "rejected")


@request.command()
@click.argument("request_id")
@click.option("--reason", help="Why (kept with the request; no personal data).")
@json_option
def cancel(request_id: str, reason: str | None, as_json: bool) -> None:
    """Cancel a request that is not running (also gives up a failed one)."""
    app = current()
    rid = _id(request_id)
    service.cancel(
        app.db(), rid, operator=app.act(Role.AGENT, "cancel requests"), now=app.now(), reason=reason
    )
    _done(app, rid, as_json, "cancelled")


@request.command()
@click.argument("request_id")
@json_option
def retry(request_id: str, as_json: bool) -> None:
    """Queue a failed request again; finished steps are not repeated."""
    app = current()
    rid = _id(request_id)
    service.retry(
        app.db(),
        rid,
        operator=app.act(Role.AGENT, "retry requests"),
        now=app.now(),
        dispatcher=app.dispatcher(),
    )
    _done(app, rid, as_json, "queued again")


@request.command()
@click.argument("request_id")
@click.option(
    "--months",
    type=click.IntRange(1, defaults.MAX_EXTENSION_MONTHS),
    default=1,
    show_default=True,
    help=f"Months to add; at most {defaults.MAX_EXTENSION_MONTHS} in all (Art. 12(3)).",
)
@click.option(
    "--reason", required=True, help="Why more time is needed (Art. 12(3)); no personal data."
)
@json_option
def extend(request_id: str, months: int, reason: str, as_json: bool) -> None:
    """Extend the deadline by up to two further months."""
    app = current()
    rid = _id(request_id)
    found = service.extend(
        app.db(),
        rid,
        months=months,
        reason=reason,
        operator=app.act(Role.AGENT, "extend deadlines"),
        now=app.now(),
    )
    if as_json:
        output.emit_json(queries.describe(found))
    else:
        click.echo(f"request {rid} now due {found.due_at:%Y-%m-%d}")


@request.command(name="list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in RequestStatus]),
    help="Only requests in this status.",
)
@click.option("--overdue", is_flag=True, help="Only open requests past their due date.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=200, show_default=True)
@json_option
def list_(status: str | None, overdue: bool, limit: int, as_json: bool) -> None:
    """List requests, newest first, each with its trouble (retrying and why, failed...)."""
    app = current()
    now = app.now()
    found = queries.list_requests(app.db(), now=now, status=status, overdue=overdue, limit=limit)
    rows = [queries.describe(r, now=now) for r in found]
    if as_json:
        output.emit_json(rows)
        return
    if not rows:
        click.echo("No requests match.")
        return
    output.table(rows, ["id", "kind", "status", "submitted_at", "due_at", "ticket", "trouble"])


@request.command()
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="Wait until the request is final or failed.")
@click.option(
    "--follow",
    is_flag=True,
    help="Wait as --wait does, showing each step's progress (not with --json).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait, in seconds, with --wait or --follow.",
)
@json_option
def show(request_id: str, wait: bool, follow: bool, timeout: float, as_json: bool) -> None:
    """Show a request: its trouble, steps, receipt and next step. Waiting ends at once
    (exit 4) on a request no one can move on without acting: awaiting approval, on hold."""
    app = current()
    rid = _id(request_id)
    snapshot: watch.Snapshot = queries.show(app.db(), rid)
    if wait or follow:
        live = output.LiveLine(tty=output.is_tty()) if follow and not as_json else None
        snapshot = watch.wait(
            watch.Watch(
                fetch=lambda: queries.show(app.db(), rid),
                timeout=timeout,
                describe=lambda s: request_view.progress_text(_view(s, app.now())),
                live=live,
                now=app.now,
            )
        )
    view = _view(snapshot, app.now())
    if as_json:
        output.emit_json(view)
    else:
        request_view.render(view)
    if view["status"] == RequestStatus.FAILED:
        click.get_current_context().exit(1)


def _view(snapshot: watch.Snapshot, now: datetime) -> dict[str, Any]:
    found, steps, types = snapshot
    return queries.describe(found, steps, now=now) | {"identity_types": list(types)}


@request.command()
@identity_options
@click.option(
    "--action",
    type=click.Choice(["export", "erase"]),
    default="erase",
    show_default=True,
    help="Which request to plan.",
)
@json_option
def plan(action: str, as_json: bool, **options: Any) -> None:
    """Show what a request would export or erase, per source and location; writes nothing."""
    from compliance import cascade
    from compliance.sources.base import Action

    app = current()
    identities = identities_from(options)
    sources = app.registry().sources
    found = cascade.plan(sources, identities, Action.ERASE if action == "erase" else Action.EXPORT)
    if as_json:
        output.emit_json(found.to_dict())
        return
    click.echo(
        f"identities found: {', '.join(f'{k} x{v}' for k, v in found.identity_types.items())}"
    )
    rows = [
        {
            "source": p.source,
            "location": loc.location,
            "scope": loc.scope.value,
            "action": loc.disposition.value,
            "count": loc.count,
            "why": "; ".join(x for x in (loc.legal_basis, loc.note) if x) or None,
        }
        for p in found
        for loc in p.locations
    ]
    output.table(rows, ["source", "location", "scope", "action", "count", "why"])
