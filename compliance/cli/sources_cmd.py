"""`gdpr sources list`, `check` and `advise`: what is registered, what is not, and which
indexes would make requests cheap on SQL sources."""

from __future__ import annotations

import click

from compliance.cli import output
from compliance.cli.context import current
from compliance.sources.check import find_gaps
from compliance.sources.sql import advice as index_advice


@click.group()
def sources() -> None:
    """The registered data sources (GDPR_SOURCES manifest and entry points)."""


@sources.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: a list of {name, kind}.")
def list_(as_json: bool) -> None:
    """List the data sources; loading validates the manifest against the live systems."""
    registry = current().registry()
    rows = [{"name": s.name, "kind": s.kind} for s in registry.sources]
    if as_json:
        output.emit_json(rows)
    elif not rows:
        click.echo("No data sources registered; set GDPR_SOURCES to a sources.toml.")
    else:
        click.echo(f"manifest: {registry.path}")
        output.table(rows, ["name", "kind"])


@sources.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable: a list of {source, location, reason, columns} (exit 1 if any).",
)
def check(as_json: bool) -> None:
    """Report personal data no source covers; exit 1 while there are gaps."""
    gaps = find_gaps(current().registry().sources)
    if as_json:
        output.emit_json(
            [
                {
                    "source": g.source,
                    "location": g.location,
                    "reason": g.reason,
                    "columns": list(g.columns),
                }
                for g in gaps
            ]
        )
    elif not gaps:
        click.echo("No unregistered personal data found.")
    else:
        click.echo(
            f"{len(gaps)} gap(s): add these to the manifest, list them in ignore_tables, "
            "or leave their schema out (check_exclude_schemas)"
        )
        for gap in gaps:
            click.echo(f"  {gap}")
    if gaps:
        click.get_current_context().exit(1)


@sources.command()
@click.option("--source", "name", metavar="NAME", help="Only this source (default: every one).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: a list of advice objects.")
def advise(name: str | None, as_json: bool) -> None:
    """Indexes SQL sources lack for requests, with the statements to add them; never
    runs them. Other kinds of source are skipped with a note."""
    registry = current().registry()
    report = index_advice.advise_sources([registry.get(name)] if name else registry.sources)
    for note in report.skipped:
        click.echo(f"note: {note}", err=as_json)
    if as_json:
        output.emit_json([a.as_dict() for a in report.advice])
    else:
        click.echo(report.text())
