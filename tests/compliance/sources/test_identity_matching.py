"""Identities match as typed: a lookalike or a differently written number finds nobody."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import BigInteger, Column, Integer, Numeric, String, Text, Uuid

from compliance import cascade
from compliance.cli.context import App
from compliance.cli.main import cli
from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.errors import ValidationError
from compliance.identities import Identities, Identity, parse_identity
from compliance.sources.base import Action, RowsItem
from compliance.sources.sql.keys import coerce, coerce_all
from tests.compliance.helpers import write_small_manifest
from tests.compliance.sources.sqlsample import ada_email, ada_resolved, load
from tests.sample_app.fixtures import SampleDatabases

pytestmark = pytest.mark.fault  # part of the fault suite

FULLWIDTH_ADA = "\uff41\uff44\uff41@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.\uff43\uff4f\uff4d"
ADA_UUID = uuid.UUID("0b0e6c2a-5f1d-4c3e-9a57-2f3e4d5c6b7a")


def user_id(value: str) -> Identities:
    return Identities.of([parse_identity("user_id", value)])


# --- coerce: a value of the column only when written the canonical way ------------------


@pytest.mark.parametrize("column_type", [Integer(), BigInteger()])
@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("0", 0), ("-7", -7), ("9223372036854775807", 2**63 - 1)],
)
def test_canonical_integer_text_is_coerced_to_the_integer(
    column_type: Integer, text: str, expected: int
) -> None:
    assert coerce(Column("id", column_type), text) == expected


@pytest.mark.parametrize(
    "text",
    ["01", "00", "+1", " 1", "1 ", "1\n", "-0", "1.0", "1e0", "0x1", "1_000", "\u0661",
     "9223372036854775808", "x' OR 1=1 --"],
)  # fmt: skip
def test_integer_written_another_way_matches_nothing_in_an_integer_column(text: str) -> None:
    assert coerce(Column("id", Integer()), text) is None


def test_coerce_all_drops_non_canonical_integers_and_keeps_the_rest() -> None:
    assert coerce_all(Column("id", Integer()), ["01", "1", "+2", "3"]) == [1, 3]


@pytest.mark.parametrize("text", [str(ADA_UUID), str(ADA_UUID).upper()])
def test_uuid_with_dashes_matches_in_either_case(text: str) -> None:
    assert coerce(Column("ref", Uuid()), text) == ADA_UUID


@pytest.mark.parametrize(
    "text",
    [
        ADA_UUID.hex,
        "{" + str(ADA_UUID) + "}",
        "urn:uuid:" + str(ADA_UUID),
        str(ADA_UUID) + " ",
        str(ADA_UUID)[:-1],
    ],
)
def test_uuid_in_another_textual_form_matches_nothing(text: str) -> None:
    assert coerce(Column("ref", Uuid()), text) is None


@pytest.mark.parametrize("text", ["01", "1", "C-0001"])
def test_text_columns_take_the_value_exactly_as_given(text: str) -> None:
    assert coerce(Column("no", String(20)), text) == text
    assert coerce(Column("no", Text()), text) == text


@pytest.mark.parametrize("text", ["1", "1.00"])
def test_decimal_columns_are_not_identity_columns_and_match_nothing(text: str) -> None:
    assert coerce(Column("amount", Numeric(10, 0)), text) is None
    assert coerce(Column("amount", Numeric(10, 2)), text) is None


# --- the sample application, on SQLite and PostgreSQL -----------------------------------


def test_user_id_with_a_leading_zero_finds_nothing_of_user_1(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        assert cascade.resolve(registry.sources, user_id("01")) == user_id("01")
        plan = cascade.plan(registry.sources, user_id("01"), Action.ERASE)
        items = [i for s in registry.sources for i in s.export(user_id("01"))]
    finally:
        registry.close()
    assert plan.total == 0
    assert [i for i in items if isinstance(i, RowsItem) and list(i.rows)] == []


def test_user_id_as_typed_still_finds_all_of_user_1(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    try:
        assert cascade.resolve(registry.sources, user_id("1")) == ada_resolved()
        by_id = cascade.plan(registry.sources, user_id("1"), Action.ERASE)
        by_email = cascade.plan(registry.sources, ada_email(), Action.ERASE)
    finally:
        registry.close()
    assert by_id.total == by_email.total > 0


def test_an_identity_built_past_parsing_still_cannot_match_through_an_integer_column(
    sample_dbs: SampleDatabases, tmp_path: Path
) -> None:
    registry = load(sample_dbs, tmp_path)
    lookalikes = Identities.of([Identity("user_id", v) for v in ["+1", "1.0", "001", " 1"]])
    try:
        assert cascade.resolve(registry.sources, lookalikes) == lookalikes
        assert cascade.plan(registry.sources, lookalikes, Action.ERASE).total == 0
    finally:
        registry.close()


def test_full_width_email_is_refused_before_any_source_is_asked() -> None:
    with pytest.raises(ValidationError, match="look-alike characters") as info:
        parse_identity("email", FULLWIDTH_ADA)
    assert FULLWIDTH_ADA not in str(info.value)


# --- the command line -------------------------------------------------------------------


@pytest.fixture
def run(db: Database, settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """`gdpr` with a small manifest whose source answers email and user_id."""
    manifest = write_small_manifest(tmp_path / "sources")

    def invoke(*args: str) -> Result:
        app = App()
        overrides = {"operator": "alice", "sources": str(manifest)}
        app._cache.update(
            settings=settings.with_overrides(**overrides),
            db=db,
            dispatcher=RecordingDispatcher(),
        )
        app.close = lambda: None  # type: ignore[method-assign]  # the fixture owns the db
        return CliRunner().invoke(cli, list(args), obj=app)

    return invoke


def test_erasure_for_a_full_width_email_is_one_line_exit_2_and_nothing_stored(run) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "erase", "--email", FULLWIDTH_ADA, "--ticket", "T-1")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith(
        "error: email contains look-alike characters (U+FF41 FULLWIDTH LATIN SMALL LETTER A"
    )
    assert FULLWIDTH_ADA not in result.output
    listed = run("request", "list", "--json")
    assert json.loads(listed.stdout) == []


def test_erasure_for_a_superscript_user_id_is_refused(run) -> None:  # type: ignore[no-untyped-def]
    result = run("request", "erase", "--user-id", "\u00b9")
    assert result.exit_code == 2
    assert "U+00B9 SUPERSCRIPT ONE at position 1" in result.output
