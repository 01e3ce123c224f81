"""The http connector against a real local HTTP server (tests/support/crm_server.py)."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from compliance.config import Settings
from compliance.errors import (
    ManifestError,
    RetryableError,
    SourceRefusedError,
    SourceUnavailableError,
    TerminalError,
)
from compliance.identities import Identities, Identity
from compliance.sources.base import Action, DataSource, Disposition, RowsItem
from compliance.sources.http import HttpSource, build
from tests.support.crm_server import CrmServer

ADA_EMAIL = "ada@example.com"
ADA = Identities.of([Identity("email", ADA_EMAIL), Identity("user_id", "1")])
BOB = Identities.of([Identity("email", "bob@example.com")])


@pytest.fixture
def crm() -> Iterator[CrmServer]:
    with CrmServer() as server:
        server.records[ADA_EMAIL] = {"email": ADA_EMAIL, "name": "Ada", "plan": "pro"}
        server.records["dee@example.com"] = {"email": "dee@example.com", "name": "Dee"}
        server.activities[ADA_EMAIL] = [{"at": "2026-01-01", "what": "call"}, {"what": "mail"}]
        yield server


def spec_for(crm: CrmServer, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": crm.url,
        "auth_secret": f"Bearer {crm.token}",
        "export": {"method": "GET", "path": "/subjects/{email}"},
        "erase": {"method": "DELETE", "path": "/subjects/{email}"},
        "purpose": "Customer relationship",
        "backoff": 0.01,
        **extra,
    }


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make(crm: CrmServer, sleeps: Sleeps | None = None, **extra: Any) -> HttpSource:
    source = build("crm", spec_for(crm, **extra), Settings())
    if sleeps is not None:
        source.client = dataclasses.replace(source.client, sleep=sleeps, jitter=lambda: 1.0)
    return source


def test_source_satisfies_the_data_source_protocol(crm: CrmServer) -> None:
    assert isinstance(make(crm), DataSource)


def test_identity_types_are_the_fields_of_every_endpoint(crm: CrmServer) -> None:
    assert make(crm).identity_types() == {"email"}
    source = make(
        crm,
        erase={"method": "POST", "path": "/erasures", "body": {"id": "{customer_id}"}},
        verify={"path": "/subjects/{email}/{user_id}"},
    )
    assert source.identity_types() == {"email", "customer_id", "user_id"}


def test_export_gets_the_subjects_record_with_the_auth_header(crm: CrmServer) -> None:
    (item,) = list(make(crm).export(ADA))
    assert isinstance(item, RowsItem)
    assert (item.source, item.collection) == ("crm", "/subjects/{email}")
    assert list(item.rows) == [{"email": ADA_EMAIL, "name": "Ada", "plan": "pro"}]
    assert item.meta.purpose == "Customer relationship"
    assert crm.requests == [("GET", "/subjects/ada%40example.com", True)]


def test_export_of_a_subject_the_api_does_not_know_yields_nothing(crm: CrmServer) -> None:
    assert list(make(crm).export(BOB)) == []


def test_export_reads_rows_under_a_dotted_records_key(crm: CrmServer) -> None:
    export = {"path": "/subjects/{email}/activities", "records": "data.items"}
    (item,) = list(make(crm, export=export).export(ADA))
    assert list(item.rows) == [{"at": "2026-01-01", "what": "call"}, {"what": "mail"}]


def test_plan_counts_what_the_api_holds_and_deletes_nothing(crm: CrmServer) -> None:
    plan = make(crm).plan(ADA, Action.ERASE)
    assert [(p.location, p.disposition, p.count) for p in plan.locations] == [
        ("GET /subjects/{email}", Disposition.DELETE, 1)
    ]
    assert ADA_EMAIL in crm.records


def test_erase_deletes_the_record_then_verify_finds_nothing(crm: CrmServer) -> None:
    source = make(crm)
    (residue,) = source.verify(ADA)
    assert residue.location == "crm:GET /subjects/{email}"
    result = source.erase(ADA, {}, 100)
    assert (result.done, result.deleted, dict(result.checkpoint)) == (True, 1, {"next": 1})
    assert set(crm.records) == {"dee@example.com"}
    assert source.verify(ADA) == []


def test_erasing_again_treats_404_as_already_gone(crm: CrmServer) -> None:
    source = make(crm)
    source.erase(ADA, {}, 100)
    again = source.erase(ADA, {}, 100)
    assert (again.done, again.deleted) == (True, 0)


def test_erase_by_post_sends_the_identity_in_a_json_body(crm: CrmServer) -> None:
    erase = {"method": "POST", "path": "/erasures", "body": {"email": "{email}"}}
    source = make(crm, erase=erase)
    assert source.erase(ADA, {}, 100).deleted == 1
    assert ADA_EMAIL not in crm.records and ADA_EMAIL not in crm.activities
    assert crm.requests[-1] == ("POST", "/erasures", True)


def test_erase_resumes_from_its_checkpoint(crm: CrmServer) -> None:
    both = Identities.of([Identity("email", ADA_EMAIL), Identity("email", "dee@example.com")])
    source = make(crm)
    first = source.erase(both, {}, batch_size=1)
    assert (first.done, first.checkpoint) == (False, {"next": 1})
    rest = source.erase(both, first.checkpoint, batch_size=1)
    assert (rest.done, rest.deleted) == (True, 1)
    assert crm.records == {}


def test_429_is_retried_after_the_retry_after_seconds(crm: CrmServer) -> None:
    sleeps = Sleeps()
    crm.fail("429", times=2, retry_after="2")
    assert make(crm, sleeps).erase(ADA, {}, 100).deleted == 1
    assert sleeps == [2.0, 2.0]


def test_retry_after_is_capped_and_accepts_an_http_date(crm: CrmServer) -> None:
    sleeps = Sleeps()
    crm.fail("429", retry_after="3600")
    crm.fail("429", retry_after="Wed, 01 Jan 2031 00:00:07 GMT")
    source = make(crm, sleeps, max_backoff=5)
    source.client = dataclasses.replace(
        source.client, clock=lambda: datetime(2031, 1, 1, tzinfo=UTC)
    )
    source.erase(ADA, {}, 100)
    assert sleeps == [5.0, 5.0]


def test_5xx_is_retried_with_exponential_backoff(crm: CrmServer) -> None:
    sleeps = Sleeps()
    crm.fail("500", times=3)
    assert list(make(crm, sleeps, backoff=0.5).export(ADA))
    assert sleeps == [0.5, 1.0, 2.0]


def test_backoff_has_jitter(crm: CrmServer) -> None:
    sleeps = Sleeps()
    crm.fail("500", times=1)
    source = make(crm, sleeps, backoff=1.0)
    source.client = dataclasses.replace(source.client, jitter=lambda: 0.0)
    list(source.export(ADA))
    assert sleeps == [0.5]


def test_persistent_5xx_gives_up_with_a_retryable_error_free_of_secrets(
    crm: CrmServer, caplog: pytest.LogCaptureFixture
) -> None:
    crm.fail("500", times=10)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SourceUnavailableError) as caught:
        make(crm, Sleeps(), max_attempts=3).erase(ADA, {}, 100)
    assert isinstance(caught.value, RetryableError)
    assert "DELETE /subjects/{email} failed 3 times (500)" in str(caught.value)
    assert len(crm.requests) == 3
    for text in (str(caught.value), caplog.text):
        assert crm.token not in text and ADA_EMAIL not in text and "ada%40" not in text
    assert "source.http.retry" in caplog.text


def test_connection_refused_is_retried_then_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = {"base_url": f"http://127.0.0.1:{port}", "erase": {"path": "/s/{email}"},
            "verify": {"path": "/s/{email}"}, "max_attempts": 2}  # fmt: skip
    source = build("crm", spec, Settings())
    sleeps = Sleeps()
    source.client = dataclasses.replace(source.client, sleep=sleeps)
    with pytest.raises(SourceUnavailableError, match="failed 2 times"):
        source.erase(ADA, {}, 10)
    assert len(sleeps) == 1


def test_a_slow_api_times_out_and_is_retried(crm: CrmServer) -> None:
    crm.fail("slow", times=1, delay=1.0)
    source = make(crm, Sleeps(), timeout=0.2)
    (item,) = list(source.export(ADA))
    assert [row["name"] for row in item.rows] == ["Ada"]
    assert len(crm.requests) == 2


def test_a_wrong_token_is_a_terminal_error_that_hides_the_secret(crm: CrmServer) -> None:
    source = make(crm, auth_secret="Bearer wrong-secret-123")
    with pytest.raises(SourceRefusedError, match="answered 401; check auth_secret") as caught:
        source.erase(ADA, {}, 100)
    assert isinstance(caught.value, TerminalError)
    assert "wrong-secret-123" not in str(caught.value)
    assert ADA_EMAIL in crm.records


def test_other_4xx_is_terminal(crm: CrmServer) -> None:
    source = make(crm, export={"path": "/nowhere/{email}"})
    with pytest.raises(SourceRefusedError, match=r"GET /nowhere/\{email\} answered 400"):
        list(source.export(ADA))


def test_identity_values_are_percent_encoded_so_they_cannot_change_the_path(
    crm: CrmServer,
) -> None:
    sneaky = Identities.of([Identity("email", "../dee@example.com?x=1#")])
    source = make(crm)
    assert list(source.export(sneaky)) == []
    assert source.erase(sneaky, {}, 10).deleted == 0
    assert "dee@example.com" in crm.records
    assert crm.requests[0][1] == "/subjects/..%2Fdee%40example.com%3Fx%3D1%23"


def test_subject_without_the_templated_identity_is_skipped(crm: CrmServer) -> None:
    only_id = Identities.of([Identity("user_id", "1")])
    source = make(crm)
    assert list(source.export(only_id)) == []
    assert source.erase(only_id, {}, 10).done
    assert crm.requests == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_url": None}, r"sources\.crm\.base_url is missing"),
        ({"base_url": "file:///etc"}, r"sources\.crm\.base_url must start with http"),
        ({"erase": None}, r"sources\.crm\.erase must be a table"),
        ({"export": None}, r"sources\.crm\.verify is missing: erasure must be checkable"),
        ({"token": "x"}, r"sources\.crm\.token is not a known setting"),
        ({"erase": {"method": "PUT", "path": "/s/{email}"}}, r"erase\.method must be one of"),
        ({"erase": {"path": "/s/{mail}"}}, r"sources\.crm\.erase\.path names an unknown"),
        ({"erase": {"path": "s/{email}"}}, r"erase\.path must start with '/'"),
        ({"erase": {"path": "/s", "body": {"e": "{email}"}}}, r"erase\.body must be a table, and"),
        ({"export": {"path": "/s/{email}", "records": 3}}, r"export\.records must be a dotted"),
        ({"auth_secret": "a\r\nX-Evil: 1"}, r"sources\.crm\.auth_secret must be one line"),
        ({"auth_header": "Bad Header:"}, r"sources\.crm\.auth_header must be a header name"),
        ({"timeout": 0}, r"sources\.crm\.timeout must be a number of at least 0\.1"),
    ],
)
def test_build_refuses_a_bad_spec_naming_the_key(
    crm: CrmServer, change: dict[str, Any], message: str
) -> None:
    spec = {k: v for k, v in {**spec_for(crm), **change}.items() if v is not None}
    with pytest.raises(ManifestError, match=message):
        build("crm", spec, Settings())
