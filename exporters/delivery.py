"""Telling the subject: the download link of an export, the receipt of an erasure.

Both are durable `notify` steps (source ``email`` in dsr_step), so a re-run after a
crash or a retry does nothing once the message went out. The raw token exists only
between issuing the link and sending the mail; a retry therefore reissues (revoking the
unsent link) rather than resending an old one.

Recipients are the request's email identities, minus any the sources discovered on
their own (the subject's identity was verified against the given ones). With no email
identity, or an address the mail server rejects for good, the export does not fail: the
step records that an operator must hand the link over (`gdpr link reissue ID`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from compliance import audit, notify
from compliance.errors import ComplianceError, ConfigError, TerminalError
from compliance.execution import RunContext, fail_step, load_step, set_counts
from compliance.identities import IdentityType, parse_identity, pseudonym
from compliance.models import DsrIdentity, StepStatus
from exporters import links

log = logging.getLogger("gdpr.delivery")

NOTIFY_SOURCE = "email"
NOTIFY_HELD_SOURCE = "email:held"  # the mail sent when an erasure goes on hold
NOTIFY_ACTION = "notify"


def deliver_export(ctx: RunContext) -> dict[str, Any]:
    """Issue a link for the request's package and email it; idempotent."""
    if ctx.dry_run:
        return {"delivery": "skipped", "reason": "dry run"}
    step = load_step(ctx, NOTIFY_SOURCE, NOTIFY_ACTION)
    if step.status == StepStatus.DONE:
        return {"delivery": "already done", **step.counts}
    recipients = recipients_of(ctx)
    if not recipients:
        return _handover(ctx, step.id, "no email identity")
    now = ctx.clock()
    with ctx.db.session() as session:
        token = links.reissue(session, ctx.request_id, ctx.settings, now, actor=ctx.actor)
        link = links.find_link(session, token)
        assert link is not None
        expires_at, max_downloads = link.expires_at, link.max_downloads
    try:
        notify.send_export_ready(
            ctx.settings,
            recipients,
            url=links.link_url(ctx.settings, token),
            expires_at=expires_at,
            max_downloads=max_downloads,
            now=now,
        )
    except ConfigError as exc:
        fail_step(ctx, step.id, str(exc))
        raise
    except TerminalError:  # the address is rejected for good: an operator takes over
        return _handover(ctx, step.id, "mail rejected")
    except ComplianceError as exc:
        fail_step(ctx, step.id, str(exc))
        raise
    _record(ctx, "export.link_mailed", {"recipients": len(recipients)})
    set_counts(ctx, step.id, {"mailed": 1, "recipients": len(recipients)}, done=True)
    log.info("export.delivery.mailed", extra={"request_id": str(ctx.request_id)})
    return {
        "delivery": "mailed",
        "recipients": len(recipients),
        "expires_at": expires_at.isoformat(),
    }


def notify_erasure(ctx: RunContext, receipt: Mapping[str, Any]) -> None:
    """Email the erasure receipt to the subject; never fails a completed erasure for good.

    An erasure a legal hold keeps waiting mails once when it goes on hold (saying what is
    held and why) and once more when it completes. Erasures a retention policy started
    mail only if that policy (or the installation) says so (`RunContext.notify`)."""
    if ctx.dry_run:
        return
    held = bool(receipt.get("held"))
    step = load_step(ctx, NOTIFY_HELD_SOURCE if held else NOTIFY_SOURCE, NOTIFY_ACTION)
    if step.status == StepStatus.DONE:
        return
    if not ctx.notify:
        set_counts(ctx, step.id, {"mailed": 0, "reason": "not to be notified"}, done=True)
        return
    if step.status == StepStatus.DONE:
        return
    recipients = recipients_of(ctx)
    if not recipients:
        set_counts(ctx, step.id, {"mailed": 0, "reason": "no email identity"}, done=True)
        return
    try:
        notify.send_erasure_receipt(
            ctx.settings,
            recipients,
            receipt=receipt,
            reference=str(ctx.request_id),
            now=ctx.clock(),
        )
    except ConfigError as exc:
        fail_step(ctx, step.id, str(exc))
        raise
    except TerminalError:
        _record(ctx, "erasure.receipt_undeliverable", {"recipients": len(recipients)})
        set_counts(ctx, step.id, {"mailed": 0, "reason": "mail rejected"}, done=True)
        return
    except ComplianceError as exc:
        fail_step(ctx, step.id, str(exc))
        raise
    _record(ctx, "erasure.receipt_mailed", {"recipients": len(recipients)})
    set_counts(ctx, step.id, {"mailed": 1, "recipients": len(recipients)}, done=True)


def recipients_of(ctx: RunContext) -> list[str]:
    """The request's email identities, except those only discovered at the sources."""
    with ctx.db.session() as session:
        discovered = set(
            session.scalars(
                select(DsrIdentity.value_hmac).where(
                    DsrIdentity.request_id == ctx.request_id,
                    DsrIdentity.type == IdentityType.EMAIL,
                    DsrIdentity.discovered.is_(True),
                )
            )
        )
    key = ctx.keyring.pseudonym_key
    return [
        value
        for value in ctx.identities.values(IdentityType.EMAIL)
        if pseudonym(key, parse_identity(IdentityType.EMAIL, value)) not in discovered
    ]


def _handover(ctx: RunContext, step_id: int, reason: str) -> dict[str, Any]:
    _record(ctx, "export.handover_required", {"reason": reason})
    set_counts(ctx, step_id, {"mailed": 0, "handover": 1, "reason": reason}, done=True)
    log.warning(
        "export.delivery.handover_required",
        extra={"request_id": str(ctx.request_id), "reason": reason},
    )
    return {
        "delivery": "operator handover",
        "reason": reason,
        "next": f"gdpr link reissue {ctx.request_id}",
    }


def _record(ctx: RunContext, action: str, details: dict[str, Any]) -> None:
    with ctx.db.session() as session:
        audit.record(
            session,
            actor=ctx.actor,
            action=action,
            now=ctx.clock(),
            request_id=ctx.request_id,
            subject=ctx.subject,
            details=details,
        )
