"""`gdpr doctor`: check every part this installation needs, one line each."""

from __future__ import annotations

import os
import uuid

import click

from compliance import doctor
from compliance.cli import output
from compliance.cli.context import App, current
from compliance.config import Settings, mask_password
from compliance.doctor import Check, Finding
from compliance.errors import ComplianceError


@click.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: a list of findings.")
def doctor_(as_json: bool) -> None:
    """Check the control database, broker, storage, mail, keyring and every registered
    source, one line each; exit 1 if any fails. Writes nothing."""
    app = current()
    settings = app.settings()
    findings = doctor.run(_checks(app, settings))
    findings += _sources(app, settings)
    findings += _warnings(app, settings, keyring_ok=_ok(findings, "keyring"))
    if as_json:
        output.emit_json(
            [{"check": f.check, "status": str(f.status), "detail": f.detail} for f in findings]
        )
    else:
        width = max(len(f.check) for f in findings)
        for finding in findings:
            click.echo(finding.line(width))
    if doctor.failed(findings):
        click.get_current_context().exit(1)


def _checks(app: App, settings: Settings) -> list[Check]:
    return [
        Check("control database", lambda: doctor.control_database(settings)),
        Check("broker", lambda: doctor.broker(settings)),
        Check("storage", lambda: _storage(settings)),
        Check("mail", lambda: doctor.mail(settings)),
        Check("keyring", lambda: doctor.keyring(app.keyring)),
    ]


def _storage(settings: Settings) -> str:
    """Object storage answers: it is asked for an object that does not exist."""
    from exporters.storage import open_storage

    open_storage(settings).exists(f"doctor/{uuid.uuid4().hex}")
    return f"{mask_password(settings.storage)} answers"


def _sources(app: App, settings: Settings) -> list[Finding]:
    """One line per registered source (loading checks each against its live system)."""
    from compliance.sources.registry import load_registry

    found: list[Finding] = []

    def load() -> str:
        registry = load_registry(
            settings, environ=os.environ, pseudonym_key=app.keyring().pseudonym_key
        )
        try:
            for source in registry.sources:
                found.append(Finding(f"source {source.name}", doctor.Status.OK, source.kind))
        finally:
            registry.close()
        return f"{len(registry.sources)} loaded from {registry.path or 'entry points'}"

    findings = doctor.run([Check("sources", load)])
    if findings[0].status == doctor.Status.OK and not found:
        detail = (
            "none registered: set GDPR_SOURCES to a sources.toml (compliance/sources/README.md)"
        )
        findings = [Finding("sources", doctor.Status.WARN, detail)]
    return [*findings, *found, *_source_tls(app, settings)]


def _source_tls(app: App, settings: Settings) -> list[Finding]:
    """Every SQL source's TLS, read from the manifest without connecting: a source that
    cannot be reached (a TLS refusal, say) is checked too."""
    from compliance.sources.registry import load_registry

    try:
        registry = load_registry(
            settings, environ=os.environ, pseudonym_key=app.keyring().pseudonym_key, connect=False
        )
    except ComplianceError:
        return []  # the sources line already says what is wrong
    try:
        warnings = [doctor.source_tls_warning(source) for source in registry.sources]
    finally:
        registry.close()
    return [w for w in warnings if w is not None]


def _ok(findings: list[Finding], check: str) -> bool:
    return any(f.check == check and f.status == doctor.Status.OK for f in findings)


def _warnings(app: App, settings: Settings, *, keyring_ok: bool) -> list[Finding]:
    warnings = [doctor.control_tls_warning(settings)]
    if keyring_ok:
        warnings.append(doctor.keyring_warning(settings, app.keyring()))
    return [w for w in warnings if w is not None]
