"""`gdpr sources list` and `gdpr sources check`: what is registered, and what is not."""

from __future__ import annotations

import click

from compliance.cli import output
from compliance.cli.context import current
from compliance.sources.check import find_gaps


@click.group()
def sources() -> None:
    """The registered data sources (GDPR_SOURCES manifest and entry points)."""


@sources.command(name="list")
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
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
