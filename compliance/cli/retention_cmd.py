"""`gdpr retention ...`: plan, run, history, report (see compliance/retention)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from compliance.cli import output
from compliance.cli.context import App, current, otp_option
from compliance.models import RetentionRun
from compliance.operators import Role
from compliance.retention import runs, sweep
from compliance.retention.report import report as build_report
from compliance.retention.sweep import SweepContext

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
policy_option = click.option(
    "--policy", help="One policy by name (default: all); `gdpr retention plan` lists them."
)


@click.group()
def retention() -> None:
    """Retention policies: what is kept past its limit, and sweeping it away."""


# An in-process run shown to a person works in chunks this long, so its progress moves.
PROGRESS_SECONDS = 2.0


def context(app: App, *, actor: str, chunk_seconds: float | None = None) -> SweepContext:
    settings = app.settings()
    if chunk_seconds is not None and chunk_seconds < settings.retention_chunk_seconds:
        settings = settings.with_overrides(retention_chunk_seconds=chunk_seconds)
    return SweepContext(
        settings=settings,
        db=app.db(),
        keyring=app.keyring(),
        sources=app.registry().sources,
        requests=app.dispatcher(),
        clock=app.now,
        actor=actor,
    )


@retention.command()
@policy_option
@json_option
def plan(policy: str | None, as_json: bool) -> None:
    """What a sweep would remove now, per policy: cutoff, items due, items held, batches."""
    app = current()
    ctx = context(app, actor=app.operator())  # a plan changes nothing: no role needed
    found = sweep.plan(ctx, policy)
    rows = [
        {
            "policy": p.policy,
            "cutoff": p.cutoff.strftime("%Y-%m-%d %H:%M"),
            "due": p.due,
            "held": p.held,
            "plan": p.note or f"{len(p.batches)} batch(es)",
        }
        for p in found
    ]
    if as_json:
        output.emit_json(
            [
                {**row, "cutoff": p.cutoff.isoformat(), "batches": [vars(b) for b in p.batches]}
                for row, p in zip(rows, found, strict=True)
            ]
        )
        return
    if not rows:
        click.echo("No retention policies: add `retention = {...}` to the sources manifest.")
        return
    output.table(rows, ["policy", "cutoff", "due", "held", "plan"])


@retention.command()
@policy_option
@click.option("--dry-run", is_flag=True, help="Count and record what would go; change nothing.")
@json_option
@otp_option
def run(policy: str | None, dry_run: bool, as_json: bool) -> None:
    """Sweep now, in this process (beat does it nightly on the workers). Progress is a bar
    on a terminal, a line every few seconds otherwise, nothing with --json."""
    app = current()
    actor = app.act(Role.ADMIN, "start retention runs")
    ctx = context(app, actor=actor, chunk_seconds=None if as_json else PROGRESS_SECONDS)
    if dry_run:
        recorded = sweep.dry_run(ctx, policy)
        _show_runs(recorded, as_json)
        return
    finished = []
    for entry in ctx.catalog.select(policy):
        name = entry.policy.name
        [found] = sweep.plan(ctx, name)
        finished.append(_run_one(ctx, name, found.due, as_json=as_json))
    _show_runs(finished, as_json)
    if any(r.counts.get("dispatched") for r in finished) and not as_json:
        click.echo(
            "erasures were queued: a worker (`gdpr worker`) runs them;"
            " `gdpr request list` shows them"
        )


def _run_one(ctx: SweepContext, name: str, due: int, *, as_json: bool) -> RetentionRun:
    if as_json:
        return sweep.run_inline(ctx, name)
    if not output.is_tty() or due == 0:  # a bar of nothing would read "1/1"
        line = output.LiveLine(tty=False)
        try:
            line.show(f"{name}: {due} item(s) due")
            return sweep.run_inline(ctx, name, progress=lambda _, t: line.show(_done(name, due, t)))
        finally:
            line.close()
    with click.progressbar(length=max(due, 1), label=name, show_pos=True) as bar:
        done = [0]

        def progress(_run: RetentionRun, totals: Mapping[str, Any]) -> None:
            now = _count(totals)
            bar.update(max(0, now - done[0]))
            done[0] = now

        result = sweep.run_inline(ctx, name, progress=progress)
        bar.update(max(due, 1) - done[0])
    return result


def _count(totals: Mapping[str, Any]) -> int:
    return int(totals.get("deleted", 0)) + int(totals.get("dispatched", 0))


def _done(name: str, due: int, totals: Mapping[str, Any]) -> str:
    """`app.sessions: 1200 of 5000 done (held 3)`: a plain progress line."""
    held = int(totals.get("held", 0))
    return f"{name}: {_count(totals)} of {due} done" + (f" (held {held})" if held else "")


def _show_runs(found: list[RetentionRun], as_json: bool) -> None:
    rows = [_row(r) for r in found]
    if as_json:
        output.emit_json(rows)
        return
    output.table(
        rows, ["run", "policy", "status", "cutoff", "deleted", "held", "dispatched", "seconds"]
    )


def _row(run: RetentionRun) -> dict[str, Any]:
    counts = run.counts or {}
    seconds = None
    if run.finished_at is not None:
        seconds = round((run.finished_at - run.started_at).total_seconds(), 1)
    return {
        "run": run.id,
        "policy": run.policy,
        "status": "dry run" if run.dry_run else run.status,
        "cutoff": run.cutoff.strftime("%Y-%m-%d %H:%M"),
        "started": run.started_at.strftime("%Y-%m-%d %H:%M"),
        "trigger": run.trigger,
        "deleted": counts.get("deleted", counts.get("due", 0)),
        "held": counts.get("held", 0),
        "dispatched": counts.get("dispatched", 0),
        "detached": counts.get("detached", 0),
        "batches": counts.get("batches", 0),
        "max_batch_ms": counts.get("max_batch_ms"),
        "seconds": seconds,
        "error": run.error,
    }


@retention.command()
@policy_option
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="How many runs, newest first.",
)
@json_option
def history(policy: str | None, limit: int, as_json: bool) -> None:
    """Past runs (newest first): counts and timings, never personal data."""
    app = current()
    store = runs.Store(app.db(), app.keyring(), app.settings().retention_lease_seconds)
    found = runs.history(store, policy, limit)
    rows = [_row(r) for r in found]
    if as_json:
        output.emit_json(rows)
        return
    output.table(
        rows, ["run", "policy", "status", "trigger", "started", "deleted", "held", "seconds"]
    )


@retention.command()
@json_option
def report(as_json: bool) -> None:
    """Per policy: the oldest item still present against its limit, how many are overdue
    and since when. Exit 1 if any is overdue beyond the grace window
    (`retention_report_grace_days`, not counting items a legal hold keeps)."""
    app = current()
    ctx = context(app, actor=app.operator())  # a report changes nothing: no role needed
    found = build_report(ctx)
    if as_json:
        output.emit_json([r.to_dict() for r in found])
    elif not found:
        click.echo("No retention policies: add `retention = {...}` to the sources manifest.")
    else:
        output.table(
            [_report_row(r.to_dict()) for r in found],
            ["policy", "limit", "oldest", "overdue", "held", "since", "state"],
        )
    late = [r.policy for r in found if r.late]
    if late:
        if not as_json:
            click.echo(f"error: overdue beyond the grace window: {', '.join(late)}", err=True)
        raise SystemExit(1)


def _report_row(data: dict[str, Any]) -> dict[str, Any]:
    age = data["oldest_age_days"]
    return {
        "policy": data["policy"],
        "limit": f"{data['limit_days']} d",
        "oldest": "-" if age is None else f"{age:.0f} d",
        "overdue": data["overdue"],
        "held": data["held"],
        "since": (data["overdue_since"] or "-")[:10],
        "state": "LATE" if data["late"] else ("held" if data["overdue"] else "ok"),
    }
