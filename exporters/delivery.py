"""Telling the subject: the download link of an export, the receipt of an erasure.

Both are durable `notify` steps (source ``email`` in dsr_step), so a re-run after a
crash or a retry does nothing once the message went out. The raw token exists only
between issuing the link and sending the mail; a retry therefore reissues (revoking the
unsent link) rather than resending an old one.

A mail is the run's last side effect: its step, and the audit event that says it went
out, are noted on the run's step log and written with the run's final transition (one
commit for both; `StepLog.note`). A crash before that commit sends the mail again on the
next run, under a fresh link, as a crash just after sending always did. The link of a
new package is issued in the package's own transaction (`ExportDelivery.issue`, given to
`exporters.job.run_export` as `on_package`), so it is durable before the mail goes out
and costs no commit of its own.

A request has one contact, and only it is written to: the given email address whose
pseudonym the request's subject is known by (`compliance.requests`: the address named as
contact, or the request's only one). Other addresses, given or discovered at the sources,
get nothing, so an address that matched nobody never receives another person's link.
With no contact, or an address the mail server rejects for good, the export does not
fail: the step records that an operator must hand the link over (`gdpr link reissue ID`).
The erasure receipt speaks in the manifest's descriptions of each location.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from compliance import notify
from compliance.errors import ComplianceError, ConfigError, TerminalError
from compliance.execution import RunContext, Step
from compliance.identities import IdentityType, parse_identity, pseudonym
from compliance.models import ExportPackage
from compliance.receipts import Facts
from compliance.sources.art15 import location_facts
from exporters import links

log = logging.getLogger("gdpr.delivery")

NOTIFY_SOURCE = "email"
NOTIFY_HELD_SOURCE = "email:held"  # the mail sent when an erasure goes on hold
NOTIFY_ACTION = "notify"


def deliver_export(ctx: RunContext) -> dict[str, Any]:
    """Issue a link for the request's package and email it; idempotent."""
    return ExportDelivery(ctx).send()


class ExportDelivery:
    """The link mail of one export run: `issue` the link in the package's transaction
    (when this run records the package), then `send` it (issuing one first otherwise)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._issued: links.IssuedLink | None = None
        self._contact: tuple[str | None] | None = None

    @property
    def contact(self) -> str | None:
        if self._contact is None:
            self._contact = (contact_of(self.ctx),)
        return self._contact[0]

    def issue(self, session: Session, package: ExportPackage) -> None:
        """`on_package` of `exporters.job.run_export`: a link for the new package being
        recorded in `session`, if this run is to mail one (its events are noted on the
        step log and appended with the package's)."""
        ctx = self.ctx
        step = ctx.steps.get(NOTIFY_SOURCE, NOTIFY_ACTION, session)
        if ctx.dry_run or step.done or self.contact is None:
            return
        note = partial(ctx.steps.note, session=session)
        self._issued = links.replace_links(
            session,
            ctx.request_id,
            ctx.subject,
            package.expires_at,
            ctx.settings,
            ctx.clock(),
            actor=ctx.actor,
            note=note,
            new_package=True,
        )

    def send(self) -> dict[str, Any]:
        """Email the link to the request's contact (or hand it over to an operator)."""
        ctx = self.ctx
        if ctx.dry_run:
            return {"delivery": "skipped", "reason": "dry run"}
        step = ctx.steps.start(NOTIFY_SOURCE, NOTIFY_ACTION)
        if step.done:
            return {"delivery": "already done", **step.counts}
        contact = self.contact
        if contact is None:
            return _handover(ctx, step, "no contact email")
        issued, self._issued = self._issued or self._reissue(), None  # the token, once
        try:
            notify.send_export_ready(
                ctx.settings,
                contact,
                url=links.link_url(ctx.settings, issued.token),
                expires_at=issued.expires_at,
                max_downloads=issued.max_downloads,
                reference=str(ctx.request_id),
                now=ctx.clock(),
            )
        except ConfigError as exc:
            ctx.steps.fail(step, str(exc))
            raise
        except TerminalError:  # the address is rejected for good: an operator takes over
            return _handover(ctx, step, "mail rejected")
        except ComplianceError as exc:
            ctx.steps.fail(step, str(exc))
            raise
        ctx.steps.update(step, counts={"mailed": 1, "recipients": 1}, done=True)
        ctx.steps.note("export.link_mailed", {"recipients": 1})
        log.info("export.delivery.mailed", extra={"request_id": str(ctx.request_id)})
        expires_at = issued.expires_at.isoformat()
        return {"delivery": "mailed", "recipients": 1, "expires_at": expires_at}

    def _reissue(self) -> links.IssuedLink:
        """A fresh link in a transaction of its own (the package was made by an earlier
        run), revoking any this run or an earlier one issued but may not have mailed."""
        ctx = self.ctx
        with ctx.db.session() as session:
            return links.reissue_link(
                session, ctx.request_id, ctx.settings, ctx.clock(), actor=ctx.actor
            )


def notify_erasure(ctx: RunContext, receipt: Mapping[str, Any]) -> None:
    """Email the erasure receipt to the subject; never fails a completed erasure for good.

    An erasure a legal hold keeps waiting mails once when it goes on hold (saying what is
    held and why) and once more when it completes. Erasures a retention policy started
    mail only if that policy (or the installation) says so (`RunContext.notify`)."""
    if ctx.dry_run:
        return
    held = bool(receipt.get("held"))
    step = ctx.steps.start(NOTIFY_HELD_SOURCE if held else NOTIFY_SOURCE, NOTIFY_ACTION)
    if step.done:
        return
    if not ctx.notify:
        ctx.steps.update(step, counts={"mailed": 0, "reason": "not to be notified"}, done=True)
        return
    contact = contact_of(ctx)
    if contact is None:
        ctx.steps.update(step, counts={"mailed": 0, "reason": "no contact email"}, done=True)
        return
    try:
        notify.send_erasure_receipt(
            ctx.settings,
            contact,
            receipt=receipt,
            reference=str(ctx.request_id),
            now=ctx.clock(),
            facts=facts_of(ctx),
        )
    except ConfigError as exc:
        ctx.steps.fail(step, str(exc))
        raise
    except TerminalError:
        ctx.steps.update(step, counts={"mailed": 0, "reason": "mail rejected"}, done=True)
        ctx.steps.note("erasure.receipt_undeliverable", {"recipients": 1})
        return
    except ComplianceError as exc:
        ctx.steps.fail(step, str(exc))
        raise
    ctx.steps.update(step, counts={"mailed": 1, "recipients": 1}, done=True)
    ctx.steps.note("erasure.receipt_mailed", {"recipients": 1})


def contact_of(ctx: RunContext) -> str | None:
    """The request's contact (module docstring), or None: it has none."""
    key = ctx.keyring.pseudonym_key
    for value in ctx.identities.values(IdentityType.EMAIL):
        if pseudonym(key, parse_identity(IdentityType.EMAIL, value)) == ctx.subject:
            return value
    return None


def facts_of(ctx: RunContext) -> Facts:
    """What the manifest says about each location of each source (titles for the mail)."""
    return {source.name: location_facts(source) for source in ctx.sources}


def _handover(ctx: RunContext, step: Step, reason: str) -> dict[str, Any]:
    ctx.steps.update(step, counts={"mailed": 0, "handover": 1, "reason": reason}, done=True)
    ctx.steps.note("export.handover_required", {"reason": reason})
    log.warning(
        "export.delivery.handover_required",
        extra={"request_id": str(ctx.request_id), "reason": reason},
    )
    return {
        "delivery": "operator handover",
        "reason": reason,
        "next": f"gdpr link reissue {ctx.request_id}",
    }
