"""`gdpr suppression reapply`: erase again the erased subjects a backup restore brought back
(see compliance/suppression.py). Subjects are shown as pseudonyms, never raw identities."""

from __future__ import annotations

import click

from compliance import suppression as service
from compliance.cli import output
from compliance.cli.context import App, current, otp_option
from compliance.freetext import check_text
from compliance.operators import Role
from compliance.requests import MAX_TICKET
from compliance.suppression import Found, Outcome, Reapply, ReapplyContext

PREFIX = 15  # characters of a pseudonym shown per line: "ps_" and 12 hex digits

_SAID = {
    Outcome.QUEUED: "erasure queued",
    Outcome.OPEN: "erasure already open",
    Outcome.CONFLICT: "not erased: the data found also names someone else (check by hand)",
    Outcome.DRY_RUN: "would queue an erasure",
}


@click.group()
def suppression() -> None:
    """The suppression list: erased subjects, kept as pseudonyms, erased again if restored."""


@suppression.command()
@click.option("--dry-run", is_flag=True, help="List who would be erased again; change nothing.")
@click.option("--ticket", help="A reference for the erasures queued (no personal data).")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=service.BATCH_SUBJECTS,
    show_default=True,
    help="Suppressed subjects searched for per scan of the sources.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@otp_option
def reapply(dry_run: bool, ticket: str | None, batch: int, as_json: bool) -> None:
    """Find erased subjects present again in the sources (after a backup restore) and
    queue a pre-approved erasure for each; one already open is not queued twice. Every
    searching source's identity columns are read and hashed: run it after a restore, or
    nightly. Exit 1 when data found also names someone else (left for a person)."""
    check_text("--ticket", ticket, MAX_TICKET)  # refused before any source is read
    app = current()
    ctx = _context(app, ticket)
    total = service.count(ctx.db)
    if as_json or not output.is_tty() or total == 0:
        result = service.reapply(ctx, dry_run=dry_run, batch=batch)
    else:
        with click.progressbar(length=total, label="suppression list", show_pos=True) as bar:
            done = [0]

            def progress(checked: int) -> None:
                bar.update(checked - done[0])
                done[0] = checked

            result = service.reapply(ctx, dry_run=dry_run, batch=batch, progress=progress)
    if as_json:
        output.emit_json(result.to_dict())
    else:
        _show(result)
    if result.count(Outcome.CONFLICT):
        click.get_current_context().exit(1)


def _context(app: App, ticket: str | None) -> ReapplyContext:
    return ReapplyContext(
        settings=app.settings(),
        db=app.db(),
        keyring=app.keyring(),
        sources=app.registry().sources,
        dispatcher=app.dispatcher(),
        operator=app.act(Role.ADMIN, "reapply the suppression list"),
        now=app.now(),
        ticket=ticket,
    )


def _show(result: Reapply) -> None:
    if not result.searched:
        click.echo(
            "warning: no source can find subjects by pseudonym (SQL sources can);"
            " nothing was searched",
            err=True,
        )
    for found in result.found:
        click.echo(_line(found))
    click.echo(_summary(result))
    if result.count(Outcome.QUEUED):
        click.echo(
            "a worker (`gdpr worker`) runs the erasures; `gdpr request show <ID>` has each receipt"
        )


def _line(found: Found) -> str:
    """`ps_0123456789ab  shop, crm  erasure queued: <id>`: pseudonym prefix, sources, result."""
    said = _SAID[found.outcome]
    if found.outcome == Outcome.DRY_RUN:
        said += " (" + ", ".join(f"{t} {n}" for t, n in found.counts.items()) + ")"
    if found.request_id is not None:
        said += f": {found.request_id}"
    if found.outcome == Outcome.CONFLICT:
        said += f"; it was erased by request {found.original_request_id}"
    return f"{found.subject[:PREFIX]}  found in {', '.join(found.sources)}  {said}"


def _summary(result: Reapply) -> str:
    where = ", ".join(result.searched) or "no source"
    if not result.checked:
        return "Nothing to do: the suppression list is empty."
    if not result.found:
        return f"Nothing to do: none of {result.checked} suppressed subject(s) is in {where} again."
    counts = ", ".join(f"{result.count(o)} {_SUMMARY[o]}" for o in Outcome if result.count(o))
    return (
        f"{len(result.found)} of {result.checked} suppressed subject(s) found again in"
        f" {where}: {counts}" + (" (dry run: nothing queued)" if result.dry_run else "")
    )


_SUMMARY = {
    Outcome.QUEUED: "erasure(s) queued",
    Outcome.OPEN: "already open",
    Outcome.CONFLICT: "conflict(s) left for a person",
    Outcome.DRY_RUN: "would be queued",
}
