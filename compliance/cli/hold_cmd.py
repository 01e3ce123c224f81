"""`gdpr hold ...`: legal holds (add, list, release). Subjects are kept as pseudonyms."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from compliance import cascade, holds, maintenance
from compliance.cli import output
from compliance.cli.context import current, otp_option
from compliance.cli.identity_options import identities_from, identity_options
from compliance.errors import RetryableError, ValidationError
from compliance.freetext import check_text
from compliance.holds import HoldScope
from compliance.identities import Identities
from compliance.operators import Role

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def hold() -> None:
    """Legal holds (Art. 17(3)(e)): what they cover is neither erased nor purged."""


@hold.command()
@identity_options
@click.option("--source", help="Hold a source (all of it, or with a subject: their data there).")
@click.option("--table", "location", help="Only this table (or prefix) of --source.")
@click.option("--reason", required=True, help="Why (a case or matter number; no personal data).")
@click.option("--basis", required=True, help="The legal basis, e.g. 'Art. 17(3)(e) GDPR'.")
@click.option("--until", help="End date (YYYY-MM-DD, UTC); the hold ends by itself then.")
@json_option
@otp_option
def add(
    source: str | None,
    location: str | None,
    reason: str,
    basis: str,
    until: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Place a legal hold on a subject, a source, or a table of a source."""
    app = current()
    identities = _subject(options)
    for name, text in (("--reason", reason), ("--basis", basis)):
        check_text(name, text, holds.MAX_TEXT, identities)  # not the subject's ids either
    registry = app.registry(connect=False)
    scope = HoldScope(identities=identities, source=source, location=location)
    created = holds.add(
        app.db(),
        scope,
        pseudonym_key=app.keyring().pseudonym_key,
        known_sources=[s.name for s in registry.sources],
        reason=reason,
        basis=basis,
        until=_date(until),
        operator=app.act(Role.ADMIN, "place legal holds"),
        now=app.now(),
        linked=_linked(identities),
    )
    if as_json:
        output.emit_json(holds.describe(created))
        return
    click.echo(f"legal hold {created.id} in force: {_covers(holds.describe(created))}")


def _subject(options: dict[str, Any]) -> Identities | None:
    if not any(options.values()):
        return None
    return identities_from(options)


def _linked(identities: Identities | None) -> Identities | None:
    """The identities the sources link to the subject's, best effort (a sweep resolves
    them again from the pseudonyms when it runs)."""
    if identities is None:
        return None
    try:
        return cascade.resolve(current().registry().sources, identities)
    except RetryableError:
        click.echo(
            "warning: a source is unreachable; the hold knows the given identities"
            " only (sweeps still find the subject by them)",
            err=True,
        )
        return None


def _date(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d")
    except ValueError:
        raise ValidationError("--until must be a date like 2027-03-31 (YYYY-MM-DD)") from None
    return day.replace(tzinfo=UTC)


def _covers(data: dict[str, Any]) -> str:
    where = "every source" if data["source"] == "*" else f"source {data['source']}"
    if data["location"] != "*":
        where += f", {data['location']}"
    who = f"subject {data['subject']}" if data["subject"] else "all data"
    until = f" until {data['until'][:10]}" if data["until"] else ""
    return f"{who} in {where}{until} ({data['basis']})"


@hold.command(name="list")
@click.option("--all", "everything", is_flag=True, help="Released and expired holds too.")
@json_option
def list_holds(everything: bool, as_json: bool) -> None:
    """Holds in force (subjects as pseudonyms)."""
    app = current()
    found = [holds.describe(h) for h in holds.listing(app.db(), app.now(), everything=everything)]
    if as_json:
        output.emit_json(found)
        return
    rows = [
        {
            **h,
            "until": (h["until"] or "-")[:10],
            "created": str(h["created_at"])[:10],
            "released": (h["released_at"] or "-")[:10],
        }
        for h in found
    ]
    columns = ["id", "subject", "source", "location", "basis", "created", "until"]
    output.table(rows, [*columns, "released"] if everything else columns)


@hold.command()
@click.argument("hold_id", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why the hold ends (no personal data).")
@json_option
@otp_option
def release(hold_id: int, reason: str, as_json: bool) -> None:
    """End a hold: what it kept is erased (waiting erasures resume) and purged again."""
    app = current()
    operator = app.act(Role.ADMIN, "release legal holds")
    ended = holds.release(app.db(), hold_id, operator=operator, reason=reason, now=app.now())
    resumed = maintenance.resume_released(app.db(), app.dispatcher(), app.now(), operator)
    if as_json:
        output.emit_json({**holds.describe(ended), "resumed": [str(r) for r in resumed]})
        return
    click.echo(f"legal hold {hold_id} released; {len(resumed)} waiting erasure(s) resumed")
