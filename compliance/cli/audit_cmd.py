"""`gdpr audit ...`: the hash-chained audit trail, its checkpoints and its log."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import click

from compliance import audit as audit_log
from compliance import audit_query, checkpoints
from compliance.cli import output
from compliance.cli.context import App, current, otp_option
from compliance.operators import Role
from compliance.requests import parse_request_id


@click.group()
def audit() -> None:
    """The hash-chained audit trail."""


@audit.command(name="verify")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable result: ok, checked, broken_at, reason and the checkpoints"
    " (exit code as without).",
)
@click.option(
    "--no-checkpoints",
    is_flag=True,
    help="Check the chain's links only, without reading its checkpoints from storage.",
)
def audit_verify(as_json: bool, no_checkpoints: bool) -> None:
    """Check every link of the audit chain, and the chain against every checkpoint in
    object storage (a chain rewritten or cut short shows there); exit 1 at the first
    broken or missing event, or at a checkpoint whose signature does not verify."""
    verdict = _verdict(current(), with_checkpoints=not no_checkpoints)
    if as_json:
        output.emit_json(_verdict_json(verdict, checked_checkpoints=not no_checkpoints))
    else:
        _show_verdict(verdict, checked_checkpoints=not no_checkpoints)
    if not verdict.ok:
        click.get_current_context().exit(1)


@audit.command(name="checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: the checkpoint's summary.")
@otp_option
def audit_checkpoint(as_json: bool) -> None:
    """Write a signed checkpoint of the chain's head to object storage now (beat writes one
    daily). Nothing new is written when the newest checkpoint already records this head."""
    from exporters.storage import open_storage

    app = current()
    app.act(Role.ADMIN, "checkpoint the audit chain")
    storage = open_storage(app.settings())
    with app.db().session() as session:
        written = checkpoints.write(session, storage, app.keyring(), app.now())
    if as_json:
        summary = checkpoints.summary(written.checkpoint) if written else None
        output.emit_json({"written": bool(written and written.created), "checkpoint": summary})
    elif written is None:
        click.echo("Nothing to do: the audit chain is empty.")
    elif not written.created:
        click.echo(
            f"Nothing to do: {written.checkpoint.key} already records the head"
            f" (event {written.checkpoint.seq})."
        )
    else:
        point = written.checkpoint
        click.echo(f"wrote {point.key}: event {point.seq}, {point.events} events")


@audit.command(name="log")
@click.option("--request", "request", metavar="ID", help="Only the events of this request.")
@click.option(
    "--email",
    metavar="ADDRESS",
    help="Only the events of this subject's requests and those naming the subject, found by"
    " the address's pseudonym (the address is neither stored nor printed).",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Events at or after WHEN: an ISO date or datetime (UTC unless it says), or a span"
    " back from now: 30m, 24h, 7d, 2w.",
)
@click.option("--until", metavar="WHEN", help="Events before WHEN (same forms as --since).")
@click.option("--action", metavar="ACTION", help="Only this action, e.g. request.submitted.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many events.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of events.")
def audit_log_cmd(
    request: str | None,
    email: str | None,
    since: str | None,
    until: str | None,
    action: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """The audit events, oldest first, one line each: time, #seq, actor, action, request
    id, details. Filters combine (all must hold)."""
    app = current()
    wanted = _filter(app, request, email, since, until, action, limit)
    with app.db().session() as session:
        events = audit_query.events(session, wanted)
        if as_json:
            _emit_json_list(audit_query.describe(e) for e in events)
            return
        shown = 0
        for event in events:
            click.echo(audit_query.line(event))
            shown += 1
    if not shown:
        click.echo("No audit events match.")


def _filter(
    app: App,
    request: str | None,
    email: str | None,
    since: str | None,
    until: str | None,
    action: str | None,
    limit: int | None,
) -> audit_query.AuditFilter:
    now = app.now()
    wanted = audit_query.AuditFilter(
        request_id=parse_request_id(request) if request is not None else None,
        since=audit_query.parse_when(since, now, option="--since") if since else None,
        until=audit_query.parse_when(until, now, option="--until") if until else None,
        action=action,
        limit=limit,
    )
    audit_query.check_window(wanted)
    if email is None:
        return wanted
    identity = audit_query.email_identity(email)  # refused before any key is loaded
    subject = audit_query.subject_of(app.keyring().pseudonym_key, identity)
    return audit_query.AuditFilter(**{**vars(wanted), "subject": subject})


def _emit_json_list(items: Iterable[dict[str, Any]]) -> None:
    """A JSON list written item by item, so a long log is never held whole."""
    click.echo("[", nl=False)
    first = True
    for item in items:
        click.echo(("\n  " if first else ",\n  ") + json.dumps(item, sort_keys=True), nl=False)
        first = False
    click.echo("\n]" if not first else "]")


def _verdict(app: App, *, with_checkpoints: bool) -> checkpoints.Verdict:
    with app.db().session() as session:
        if not with_checkpoints:
            return checkpoints.Verdict(audit_log.verify_chain(session), 0, None)
        from exporters.storage import open_storage

        storage = open_storage(app.settings())
        return checkpoints.verify(session, storage, app.keyring())


def _verdict_json(verdict: checkpoints.Verdict, *, checked_checkpoints: bool) -> dict[str, object]:
    problems = sorted(verdict.problems, key=_order)
    first = next((p.reason for p in problems if p.seq == verdict.first_bad), "")
    result: dict[str, object] = {
        "ok": verdict.ok,
        "checked": verdict.chain.checked,
        "broken_at": verdict.first_bad,
        "reason": verdict.chain.reason if verdict.chain.broken_at == verdict.first_bad else first,
    }
    if checked_checkpoints:
        result["checkpoints"] = {
            "read": verdict.checkpoints,
            "newest": verdict.newest,
            "problems": [{"key": p.key, "seq": p.seq, "reason": p.reason} for p in problems],
        }
    return result


def _order(problem: checkpoints.Problem) -> tuple[int, int]:
    return (1, 0) if problem.seq is None else (0, problem.seq)


def _show_verdict(verdict: checkpoints.Verdict, *, checked_checkpoints: bool) -> None:
    if verdict.ok:
        click.echo(f"audit chain intact: {verdict.chain.checked} events")
        if checked_checkpoints:
            click.echo(_checkpoints_line(verdict))
        return
    lines: list[tuple[tuple[int, int], str]] = []
    chain = verdict.chain
    if chain.broken_at is not None:
        lines.append(((0, chain.broken_at), f"event {chain.broken_at}: {chain.reason}"))
    for problem in verdict.problems:
        said = problem.reason if problem.seq is None else f"event {problem.seq}: {problem.reason}"
        lines.append((_order(problem), said))
    for _, said in sorted(lines, key=lambda pair: pair[0]):
        prefix = "audit chain BROKEN at " if said.startswith("event ") else ""
        click.echo(f"{prefix}{said}", err=True)


def _checkpoints_line(verdict: checkpoints.Verdict) -> str:
    if verdict.newest is None:
        return "no audit checkpoints yet (`gdpr audit checkpoint` writes one; beat, daily)"
    return f"audit checkpoints agree: {verdict.checkpoints}, the newest at event {verdict.newest}"
