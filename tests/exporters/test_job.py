"""The export runner: one encrypted package per request, counted steps, PII-free records."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from compliance.config import Settings
from compliance.db import Database
from compliance.errors import SourceUnavailableError
from compliance.execution import RunContext
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.models import (
    AuditEvent,
    DsrIdentity,
    DsrStep,
    ExportPackage,
    RequestKind,
    StepStatus,
)
from compliance.sources.base import (
    Action,
    Art15,
    Disposition,
    EraseResult,
    ExportItem,
    FileItem,
    LocationPlan,
    Residue,
    RowsItem,
    SourcePlan,
)
from exporters.crypto import decrypt_stream, wrapper_for
from exporters.job import package_key, run_export
from exporters.storage import open_storage
from tests.compliance.helpers import NOW, ada, submit_request

EMAIL = "ada@example.com"


@dataclass
class ShopSource:
    """A tiny in-test source: two orders and an invoice PDF for whoever asks."""

    name: str = "shop"
    kind: str = "test"
    fail: bool = False
    exported: int = 0
    meta: Art15 = field(default_factory=lambda: Art15(purpose="Deliver your orders"))

    def identity_types(self) -> frozenset[str]:
        return frozenset({"email"})

    def resolve(self, identities: Identities) -> Identities:
        return identities

    def plan(self, identities: Identities, action: Action) -> SourcePlan:
        return SourcePlan(self.name, self.kind, (LocationPlan("orders", Disposition.EXPORT, 2),))

    def export(self, identities: Identities) -> Iterator[ExportItem]:
        self.exported += 1
        yield RowsItem(self.name, "orders", self._orders(identities), self.meta)
        yield FileItem(self.name, "invoices/1.pdf", lambda: iter([b"%PDF-1.7 invoice"]), 16)

    def _orders(self, identities: Identities) -> Iterator[Mapping[str, Any]]:
        yield {"id": 1, "email": identities.values("email")[0], "total": "9.99"}
        if self.fail:
            raise SourceUnavailableError("shop database unreachable; retry later")
        yield {"id": 2, "email": identities.values("email")[0], "total": "5.00"}

    def erase(
        self, identities: Identities, checkpoint: Mapping[str, Any], batch_size: int
    ) -> EraseResult:
        return EraseResult(done=True)

    def verify(self, identities: Identities) -> list[Residue]:
        return []

    def close(self) -> None:
        pass


def context(
    db: Database, settings: Settings, source: ShopSource, dry_run: bool = False
) -> RunContext:
    request = submit_request(db, settings, RequestKind.EXPORT)
    return RunContext(
        settings=settings,
        db=db,
        keyring=load_keyring(settings),
        sources=[source],
        request_id=request.id,
        subject=request.subject,
        identities=ada(),
        dry_run=dry_run,
        clock=lambda: NOW,
    )


def open_package(ctx: RunContext) -> zipfile.ZipFile:
    storage = open_storage(ctx.settings)
    plain = decrypt_stream(
        storage.download(package_key(ctx.request_id)), wrapper_for(ctx.settings, ctx.keyring)
    )
    return zipfile.ZipFile(io.BytesIO(b"".join(plain)))


def test_export_uploads_one_encrypted_package_and_records_it(
    db: Database, settings: Settings
) -> None:
    ctx = context(db, settings, ShopSource())
    summary = run_export(ctx)
    assert summary["created"] is True
    assert summary["rows"] == 2 and summary["files"] == 1
    package = open_package(ctx)
    orders = json.loads(package.read("data/shop/orders.json"))
    assert [o["id"] for o in orders] == [1, 2]
    assert package.read("files/shop/invoices/1.pdf") == b"%PDF-1.7 invoice"
    with db.session() as session:
        row = session.scalars(select(ExportPackage)).one()
        assert row.object_key == f"exports/{ctx.request_id}.zip.enc"
        assert row.size == open_storage(settings).size(row.object_key)
        assert (row.expires_at - NOW).days == settings.package_ttl_days
        step = session.scalars(select(DsrStep).where(DsrStep.action == "export")).one()
        assert step.status == StepStatus.DONE
        assert step.counts["rows"] == 2 and step.counts["files"] == 1
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "export.packaged")
        ).one()
        assert event.details["rows"] == 2
    assert EMAIL not in json.dumps(summary)
    assert EMAIL not in json.dumps(event.details)


def test_running_again_returns_the_same_package_without_building_another(
    db: Database, settings: Settings
) -> None:
    source = ShopSource()
    ctx = context(db, settings, source)
    first = run_export(ctx)
    second = run_export(ctx)
    assert second["created"] is False
    assert second["sha256"] == first["sha256"]
    assert source.exported == 1
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ExportPackage)) == 1
        packaged = select(func.count()).where(AuditEvent.action == "export.packaged")
        assert session.scalar(packaged) == 1


def test_a_failing_source_fails_its_step_and_leaves_no_package(
    db: Database, settings: Settings
) -> None:
    source = ShopSource(fail=True)
    ctx = context(db, settings, source)
    with pytest.raises(SourceUnavailableError):
        run_export(ctx)
    assert not open_storage(settings).exists(package_key(ctx.request_id))
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ExportPackage)) == 0
        step = session.scalars(select(DsrStep).where(DsrStep.action == "export")).one()
        assert step.status == StepStatus.FAILED
        assert step.error is not None and "SourceUnavailableError" in step.error
    source.fail = False
    assert run_export(ctx)["rows"] == 2


def test_what_discovery_finds_is_stored_with_the_package_and_not_before(
    db: Database, settings: Settings
) -> None:
    @dataclass
    class LinkingShop(ShopSource):
        def resolve(self, identities: Identities) -> Identities:
            return identities.union([parse_identity("customer_id", "C-77")])

    source = LinkingShop(fail=True)
    ctx = context(db, settings, source)
    with pytest.raises(SourceUnavailableError):  # the failed step is saved meanwhile
        run_export(ctx)
    assert discovered(db, ctx) == [] and step_status(db, ctx, "discover") == "running"
    source.fail = False
    assert run_export(ctx)["rows"] == 2  # resolved again, stored with the package
    assert discovered(db, ctx) == ["customer_id"]
    assert step_status(db, ctx, "discover") == "done"


def discovered(db: Database, ctx: RunContext) -> list[str]:
    with db.session() as session:
        query = select(DsrIdentity.type).where(
            DsrIdentity.request_id == ctx.request_id, DsrIdentity.discovered.is_(True)
        )
        return list(session.scalars(query))


def step_status(db: Database, ctx: RunContext, action: str) -> str | None:
    with db.session() as session:
        query = select(DsrStep.status).where(
            DsrStep.request_id == ctx.request_id, DsrStep.action == action
        )
        return session.scalar(query)


def test_a_dry_run_counts_and_stores_nothing(db: Database, settings: Settings) -> None:
    ctx = context(db, settings, ShopSource(), dry_run=True)
    summary = run_export(ctx)
    assert summary == {"request_id": str(ctx.request_id), "dry_run": True, "sources": {"shop": 2}}
    assert not open_storage(settings).exists(package_key(ctx.request_id))


@pytest.mark.s3
def test_export_to_s3_with_a_kms_wrapped_key(
    db: Database, settings: Settings, s3_settings: Settings, s3_endpoint: str
) -> None:
    import boto3

    kms_key = boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1").create_key()
    s3 = settings.with_overrides(
        storage_url=s3_settings.storage_url,
        s3_endpoint_url=s3_endpoint,
        kms_endpoint_url=s3_endpoint,
        kms_key_id=kms_key["KeyMetadata"]["KeyId"],
    )
    ctx = context(db, s3, ShopSource())
    summary = run_export(ctx)
    assert summary["key_id"].startswith("kms:")
    assert open_package(ctx).read("files/shop/invoices/1.pdf") == b"%PDF-1.7 invoice"


def test_a_long_export_keeps_its_claim_fresh_so_it_is_not_run_twice(
    db: Database, settings: Settings
) -> None:
    from datetime import timedelta

    from compliance.lifecycle import Event, transition
    from compliance.maintenance import release_stale_claims

    times = [NOW]
    released: list[list[Any]] = []

    @dataclass
    class SlowSource(ShopSource):
        def _orders(self, identities: Identities) -> Iterator[Mapping[str, Any]]:
            for n in range(3):  # each row takes longer than a claim may stay silent
                times.append(times[-1] + timedelta(seconds=settings.lease_seconds + 1))
                yield {"id": n, "email": EMAIL, "total": "1.00"}
                released.append(release_stale_claims(db, settings, times[-1]))

    ctx = context(db, settings, SlowSource())
    ctx = dataclasses.replace(ctx, clock=lambda: times[-1])
    with db.session() as session:
        transition(session, ctx.request_id, Event.CLAIM, actor="worker", now=NOW)
    run_export(ctx)
    assert released == [[], [], []]


def test_a_later_run_reads_its_steps_afresh_and_finds_the_package(
    db: Database, settings: Settings
) -> None:
    source = ShopSource()
    ctx = context(db, settings, source)
    first = run_export(ctx)
    later = dataclasses.replace(ctx)  # a new run: its step log reads the database
    again = run_export(later)
    assert again["created"] is False and again["sha256"] == first["sha256"]
    assert source.exported == 1


def _actions(db: Database, ctx: RunContext) -> list[str]:
    with db.session() as session:
        return list(
            session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.request_id == ctx.request_id)
                .order_by(AuditEvent.seq)
            )
        )


def _links(db: Database, ctx: RunContext) -> int:
    from compliance.models import DownloadLink

    with db.session() as session:
        query = select(func.count()).where(DownloadLink.request_id == ctx.request_id)
        return int(session.scalar(query) or 0)


def test_a_new_package_gets_its_link_in_the_same_transaction_and_it_is_the_one_mailed(
    db: Database, settings: Settings, tmp_path: Any
) -> None:
    from exporters.delivery import ExportDelivery

    outbox = settings.with_overrides(mail_url=(tmp_path / "outbox").as_uri())
    ctx = context(db, outbox, ShopSource())
    delivery = ExportDelivery(ctx)
    ctx.steps.of(Action.EXPORT)  # the steps read, as the worker reads them with its claim
    commits: list[int] = []
    from sqlalchemy import event

    def commit(_conn: Any) -> None:
        commits.append(1)

    event.listen(db.engine, "commit", commit)
    try:
        run_export(ctx, on_package=delivery.issue)
    finally:
        event.remove(db.engine, "commit", commit)
    assert len(commits) == 1  # the discovered identities, the package and its link
    assert _links(db, ctx) == 1
    assert _actions(db, ctx)[-2:] == ["export.packaged", "link.issued"]
    assert delivery.send()["delivery"] == "mailed"
    ctx.steps.save()  # as the run's final transition does
    assert _links(db, ctx) == 1  # the link issued with the package went out, not another
    assert _actions(db, ctx)[-3:] == ["export.packaged", "link.issued", "export.link_mailed"]
    (mail,) = (tmp_path / "outbox").glob("*.eml")
    assert "/d/" in mail.read_text()


def test_a_package_transaction_that_rolls_back_leaves_no_package_link_or_event(
    db: Database, settings: Settings
) -> None:
    from exporters.delivery import ExportDelivery

    ctx = context(db, settings, ShopSource())
    delivery = ExportDelivery(ctx)

    def issue_then_fail(session: Any, package: ExportPackage) -> None:
        delivery.issue(session, package)
        raise SourceUnavailableError("control database went away; retry later")

    with pytest.raises(SourceUnavailableError):
        run_export(ctx, on_package=issue_then_fail)
    assert _links(db, ctx) == 0
    assert "export.packaged" not in _actions(db, ctx)
    ctx.steps.save()  # what the worker's release writes: the noted events are forgotten
    assert "export.packaged" not in _actions(db, ctx)
    assert "link.issued" not in _actions(db, ctx)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(ExportPackage)) == 0
