from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import NotFoundError, StateError, TokenError, ValidationError
from compliance.models import AuditEvent, DownloadLink
from exporters import links
from exporters.links import LinkState

MakeRequest = Callable[..., uuid.UUID]


def _issue(db: Database, settings: Settings, request_id: uuid.UUID) -> str:
    with db.session() as session:
        return links.issue_link(session, request_id, settings, utcnow())


def _events(db: Database, action: str) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_a_token_has_at_least_256_bits_and_only_its_hash_is_stored(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    request_id = make_export_request()
    token = _issue(db, settings, request_id)
    assert len(token) >= 43  # 32 random bytes, base64url
    with db.session() as session:
        row = session.scalars(select(DownloadLink)).one()
        assert row.token_hash == links.hash_token(token)
        assert token not in row.token_hash
        assert row.max_downloads == settings.link_max_downloads
        assert row.expires_at - row.created_at == timedelta(days=settings.link_ttl_days)


def test_audit_events_carry_the_hash_prefix_and_never_the_token(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    token = _issue(db, settings, make_export_request())
    (event,) = _events(db, "link.issued")
    assert event.details["token"] == links.hash_token(token)[:8]
    assert token not in str(event.details)


def test_a_link_never_outlives_its_package(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    request_id = make_export_request(package_days=2)
    _issue(db, settings.with_overrides(link_ttl_days=7), request_id)
    with db.session() as session:
        row = session.scalars(select(DownloadLink)).one()
        assert row.expires_at - row.created_at < timedelta(days=2, seconds=5)


def test_check_accepts_a_live_token(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    request_id = make_export_request()
    token = _issue(db, settings, request_id)
    with db.session() as session:
        assert links.check(session, token, utcnow()).request_id == request_id


@pytest.mark.parametrize(
    ("scenario", "state"),
    [
        ("expired", LinkState.EXPIRED),
        ("revoked", LinkState.REVOKED),
        ("used_up", LinkState.USED_UP),
        ("unknown", LinkState.UNKNOWN),
        ("malformed", LinkState.MALFORMED),
        ("package_gone", LinkState.PACKAGE_GONE),
    ],
)
def test_every_kind_of_bad_token_gets_the_same_vague_error(
    db: Database,
    settings: Settings,
    make_export_request: MakeRequest,
    scenario: str,
    state: LinkState,
) -> None:
    request_id = make_export_request()
    token = _issue(db, settings, request_id)
    now = utcnow()
    with db.session() as session:
        link = session.scalars(select(DownloadLink)).one()
        if scenario == "expired":
            now = link.expires_at + timedelta(seconds=1)
        elif scenario == "revoked":
            links.revoke(session, request_id, now, actor="bob")
        elif scenario == "used_up":
            link.downloads = link.max_downloads
        elif scenario == "unknown":
            token = links.new_token()
        elif scenario == "malformed":
            token = "x" * 100_000
        elif scenario == "package_gone":
            from compliance.models import ExportPackage

            session.scalars(select(ExportPackage)).one().deleted_at = now
    with db.session() as session:
        assert links.inspect(session, token, now).state is state
        with pytest.raises(TokenError) as caught:
            links.check(session, token, now)
    assert str(caught.value) == links.VAGUE


def test_consume_counts_downloads_until_the_limit(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    token = _issue(db, settings.with_overrides(link_max_downloads=2), make_export_request())
    left = []
    for _ in range(2):
        with db.session() as session:
            link = links.check(session, token, utcnow())
            left.append(links.consume(session, link, utcnow(), actor="web"))
    assert left == [1, 0]
    with db.session() as session, pytest.raises(TokenError):
        links.check(session, token, utcnow())
    assert [e.details["download"] for e in _events(db, "link.downloaded")] == [1, 2]


def test_concurrent_downloads_cannot_exceed_the_limit(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    token = _issue(db, settings.with_overrides(link_max_downloads=3), make_export_request())
    with db.session() as session:
        link = links.check(session, token, utcnow())
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def attempt() -> None:
        barrier.wait()
        try:
            with db.session() as session:
                links.consume(session, link, utcnow(), actor="web")
            outcomes.append("ok")
        except TokenError:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
    with db.session() as session:
        assert session.scalars(select(DownloadLink.downloads)).one() == 3


def test_reissue_revokes_the_old_link_and_returns_a_working_new_one(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    request_id = make_export_request()
    old = _issue(db, settings, request_id)
    with db.session() as session:
        new = links.reissue(session, request_id, settings, utcnow(), actor="bob")
    assert new != old
    with db.session() as session:
        assert links.inspect(session, old, utcnow()).state is LinkState.REVOKED
        assert links.check(session, new, utcnow()).request_id == request_id
        assert len(links.live_links(session, request_id, utcnow())) == 1
    (revoked,) = _events(db, "link.revoked")
    assert revoked.actor == "bob"
    assert revoked.details == {"token": links.hash_token(old)[:8]}


def test_revoke_of_an_unknown_request_is_a_clear_not_found(db: Database) -> None:
    with db.session() as session, pytest.raises(NotFoundError, match="does not exist"):
        links.revoke(session, uuid.uuid4(), utcnow(), actor="bob")


def test_no_link_is_issued_for_an_erasure_or_a_request_without_package(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    erasure = make_export_request(kind="erasure", with_package=False)
    unpackaged = make_export_request(with_package=False)
    expired = make_export_request(package_days=-1)
    for request_id, error, message in [
        (erasure, ValidationError, "only an export has download links"),
        (unpackaged, StateError, "no export package"),
        (expired, StateError, "has expired"),
    ]:
        with pytest.raises(error, match=message):
            _issue(db, settings, request_id)
    with db.session() as session:
        assert session.scalars(select(DownloadLink)).all() == []


def test_refusals_are_audited_with_their_reason(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    request_id = make_export_request()
    token = _issue(db, settings, request_id)
    with db.session() as session:
        links.revoke(session, request_id, utcnow(), actor="bob")
        verdict = links.inspect(session, token, utcnow())
        links.record_refusal(session, verdict, utcnow(), actor="web")
        links.record_refusal(session, links.inspect(session, "bad", utcnow()), utcnow(), "web")
    revoked, malformed = _events(db, "link.refused")
    assert revoked.details == {"token": links.hash_token(token)[:8], "reason": "revoked"}
    assert revoked.request_id == request_id
    assert malformed.details == {"token": "-", "reason": "malformed"}
    assert malformed.request_id is None


# --- gdpr link reissue / revoke -----------------------------------------------------------


def _run(db: Database, settings: Settings, *args: str) -> Result:
    from compliance.cli.context import App
    from compliance.cli.main import cli

    app = App()
    app._cache.update(settings=settings.with_overrides(operator="bob"), db=db)
    app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
    return CliRunner().invoke(cli, list(args), obj=app)


def test_link_reissue_prints_a_working_url_and_revokes_the_old_link(
    db: Database, settings: Settings, make_export_request: MakeRequest
) -> None:
    request_id = make_export_request()
    old = _issue(db, settings, request_id)
    result = _run(db, settings, "link", "reissue", str(request_id))
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith(f"{settings.download_base_url}/d/")
    with db.session() as session:
        assert links.check(session, url.rsplit("/", 1)[1], utcnow()).request_id == request_id
        assert links.inspect(session, old, utcnow()).state is LinkState.REVOKED
    as_json = json.loads(_run(db, settings, "link", "reissue", str(request_id), "--json").stdout)
    assert as_json["request_id"] == str(request_id)
    assert as_json["max_downloads"] == settings.link_max_downloads
    assert as_json["url"] != url


def test_link_revoke_revokes_everything_and_a_second_time_has_nothing_to_do(
    db: Database,
    settings: Settings,
    make_export_request: MakeRequest,
    as_operator: Callable[[str], Database],
    recorded_name: Callable[[str], str],
) -> None:
    request_id = make_export_request()
    _issue(db, settings, request_id)
    first = _run(as_operator("bob"), settings, "link", "revoke", str(request_id), "--json")
    assert first.exit_code == 0 and json.loads(first.stdout)["revoked"] == 1
    second = _run(as_operator("bob"), settings, "link", "revoke", str(request_id))
    assert second.exit_code == 0 and second.stdout.startswith("Nothing to revoke")
    with db.session() as session:
        assert links.live_links(session, request_id, utcnow()) == []
    assert [e.actor for e in _events(db, "link.revoked")] == [recorded_name("bob")]


def test_link_commands_refuse_bad_ids_in_one_line(db: Database, settings: Settings) -> None:
    malformed = _run(db, settings, "link", "reissue", "not-a-uuid")
    assert malformed.exit_code == 2
    assert malformed.output.strip().count("\n") == 0
    unknown = _run(db, settings, "link", "revoke", str(uuid.uuid4()))
    assert unknown.exit_code == 3 and "does not exist" in unknown.output
    with db.session() as session:
        assert session.scalars(select(AuditEvent)).all() == []
