"""`gdpr request show` for people: the request, its trouble, its steps, its receipt in
words, and the next step. Reads the PII-free view `compliance.queries.describe` builds."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import click

from compliance.cli import output

BEFORE_DUE = ("subject", "ticket", "note", "submitted_by", "submitted_at", "due_at")
AFTER_DUE = ("approved_by", "started_at", "completed_at", "attempts")
COUNT_KEYS = ("deleted", "anonymized", "retained", "exported", "detached", "repointed", "untouched")
OWN = ("deleted", "anonymized", "retained")  # the receipt's totals: the subject's own rows
SUBJECT = "subject"  # a location's scope (compliance.sources.base.Scope): their own rows
BESIDES = {  # (scope, action) of rows that are not the subject's own, in words
    ("shared", "retain"): "shared rows kept for others",
    ("reference", "detach"): "links to them removed from kept rows",
    ("reference", "repoint"): "links in kept rows pointed at a placeholder",
    ("others", "detach"): "links to them removed from other people's rows",
    ("others", "repoint"): "other people's links pointed at a placeholder",
}


def render(view: Mapping[str, Any]) -> None:
    """Print a described request (with `identity_types`) for a person."""
    output.fields(_fields(view))
    if view["steps"]:
        click.echo("")
        rows = [step | {"counts": output.summarise(step["counts"])} for step in view["steps"]]
        output.table(rows, ["source", "action", "status", "counts", "attempts", "error"])
    if view["receipt"]:
        click.echo("")
        render_receipt(view["kind"], view["receipt"])
    for hint in view["next"]:
        click.echo(f"next: {hint}")


def _fields(view: Mapping[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [(k, view[k]) for k in ("id", "kind", "status")]
    if view["dry_run"]:
        pairs.append(("dry run", "yes: planned only; nothing was changed or mailed"))
    if view["trouble"]:
        pairs.append(("trouble", view["trouble"]))
    elif view["last_error"]:
        pairs.append(("last_error", view["last_error"]))
    pairs += [(k, view[k]) for k in BEFORE_DUE]
    if view["extended_months"]:
        reason = view["extension_reason"] or "-"
        pairs.append(("extended", f"by {view['extended_months']} month(s): {reason}"))
    pairs += [(k, view[k]) for k in AFTER_DUE]
    return [*pairs, ("identities", ", ".join(view["identity_types"]))]


def render_receipt(kind: str, receipt: Mapping[str, Any]) -> None:
    """The receipt in words: what was (or, in a dry run, would be) exported or erased."""
    dry = bool(receipt.get("dry_run"))
    if kind == "erasure":
        click.echo("receipt: what the erasure would do" if dry else "receipt")
        _erasure(receipt, dry)
    else:
        click.echo("receipt: what the export would hold" if dry else "receipt")
        _export(receipt, dry)
    for line in held_lines(receipt):
        click.echo(line)


def _erasure(receipt: Mapping[str, Any], dry: bool) -> None:
    rows = list(_erasure_rows(receipt))
    output.table(rows, ["source", "location", "scope", "action", "count", "why"])
    if dry:
        return
    own = ", ".join(f"{k} {int(receipt.get(k, 0))}" for k in OWN)
    click.echo(f"the subject's own rows (scope subject): {own}")
    besides = _besides(rows)
    if besides:
        click.echo(f"besides: {besides}")
    verified = "nothing left" if receipt.get("verified") else "not verified"
    click.echo(f"verified: {verified}")
    exports = receipt.get("exports") or {}
    if exports:
        click.echo(
            f"exports of the subject: {exports.get('links_revoked', 0)} link(s) revoked,"
            f" {exports.get('packages_deleted', 0)} package(s) deleted"
        )


def _erasure_rows(receipt: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One row per location of the receipt; a source that lists no locations (an HTTP
    API counts per call) gets one row per count, so the rows add up to the totals."""
    for source in receipt.get("sources", []):
        locations = source.get("locations") or []
        for loc in locations:
            yield {
                "source": source["source"],
                "location": loc["location"],
                "scope": loc.get("scope", SUBJECT),
                "action": loc["disposition"],
                "count": next((loc[k] for k in COUNT_KEYS if k in loc), None),
                "why": "; ".join(x for x in (loc.get("legal_basis"), loc.get("note")) if x) or None,
            }
        if locations:
            continue
        for key, action in zip(OWN, ("delete", "anonymize", "retain"), strict=True):
            if int(source.get(key) or 0):
                yield {
                    "source": source["source"],
                    "location": "*",
                    "scope": SUBJECT,
                    "action": action,
                    "count": int(source[key]),
                    "why": None,
                }


def _besides(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the rows that are not the subject's own add up to, in words."""
    totals: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["scope"] != SUBJECT:
            key = (str(row["scope"]), str(row["action"]))
            totals[key] = totals.get(key, 0) + int(row["count"] or 0)
    return ", ".join(
        f"{BESIDES.get(key, ' '.join(key))} {total}" for key, total in totals.items() if total
    )


def _export(receipt: Mapping[str, Any], dry: bool) -> None:
    if dry:
        planned = receipt.get("sources") or {}
        rows = [{"source": name, "items": count} for name, count in planned.items()]
        output.table(rows, ["source", "items"])
        return
    click.echo(
        f"package: {_size(int(receipt.get('size', 0)))}, {receipt.get('rows', 0)} row(s) and"
        f" {receipt.get('files', 0)} file(s) from {receipt.get('sources', 0)} source(s);"
        f" stored until {str(receipt.get('expires_at', '-'))[:10]}"
    )
    delivery = receipt.get("delivery") or {}
    if delivery.get("delivery") == "mailed":
        click.echo(
            f"delivery: link mailed to {delivery.get('recipients', 0)} address(es);"
            f" it expires {str(delivery.get('expires_at', '-'))[:10]}"
        )
    elif delivery:
        reason = delivery.get("reason")
        click.echo(f"delivery: {delivery.get('delivery')}" + (f" ({reason})" if reason else ""))


def held_lines(receipt: Mapping[str, Any]) -> list[str]:
    lines = []
    for entry in receipt.get("held", []):
        for hold in entry["holds"]:
            until = f" until {hold['until'][:10]}" if hold.get("until") else ""
            lines.append(
                f"held: {entry['source']} by legal hold {hold['hold']} ({hold['legal_basis']})"
                f"{until}; erased when the hold ends"
            )
    return lines


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KB", "MB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def progress_text(view: Mapping[str, Any]) -> str:
    """One line for `show --follow`: the status, its trouble, each step's counts."""
    parts = [str(view["status"])]
    if view["trouble"]:
        parts.append(str(view["trouble"]))
    steps: Sequence[Mapping[str, Any]] = view["steps"]
    for step in steps:
        counts = output.summarise(step["counts"])
        shown = "" if counts == "-" else f" {counts}"
        parts.append(f"{step['source']} {step['action']} {step['status']}{shown}")
    return " | ".join(parts)
