"""Small builders shared by the compliance tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event

from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.models import DsrRequest, RequestKind
from compliance.requests import Submission, submit
from compliance.sources.base import Action, DataSource, EraseResult, Residue, SourcePlan

NOW = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


def ada() -> Identities:
    return Identities.of(
        [parse_identity("email", "ada@example.com"), parse_identity("user_id", "1")]
    )


class FakeSource:
    """A source that holds nothing and answers the identity types it is given."""

    kind = "fake"

    def __init__(
        self, name: str, label: str = "", answers: Iterable[str] = ("email", "user_id")
    ) -> None:
        self.name = name
        self.label = label
        self.answers = frozenset(answers)
        self.closed = False

    def identity_types(self) -> frozenset[str]:
        return self.answers

    def resolve(self, identities: Any) -> Any:
        return identities

    def plan(self, identities: Any, action: Action) -> SourcePlan:
        return SourcePlan(self.name, self.kind)

    def export(self, identities: Any) -> Any:
        return iter(())

    def erase(self, identities: Any, checkpoint: Any, batch_size: int) -> EraseResult:
        return EraseResult(done=True)

    def verify(self, identities: Any) -> list[Residue]:
        return []

    def close(self) -> None:
        self.closed = True


def answering(*types: str) -> tuple[DataSource, ...]:
    """A registry of one fake source answering `types` (default: email and user_id)."""
    return (FakeSource("app", answers=types or ("email", "user_id")),)


SMALL_MANIFEST = """\
[sources.app]
kind = "sql"
url = "sqlite:///app.db"

[sources.app.tables.users]
identities = { email = "email", id = "user_id" }
"""


def write_small_manifest(folder: Path) -> Path:
    """A real manifest of one SQLite database whose `users` answer email and user_id."""
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "app.db") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.close()
    path = folder / "sources.toml"
    path.write_text(SMALL_MANIFEST, encoding="utf-8")
    return path


def submit_request(
    db: Database,
    settings: Settings,
    kind: RequestKind = RequestKind.ERASURE,
    *,
    operator: str = "alice",
    dispatcher: RecordingDispatcher | None = None,
    sources: Sequence[DataSource] | None = None,
) -> DsrRequest:
    return submit(
        db,
        settings,
        load_keyring(settings),
        Submission(kind=kind, identities=ada(), ticket="T-1"),
        sources=answering() if sources is None else sources,
        operator=operator,
        now=NOW,
        dispatcher=dispatcher or RecordingDispatcher(),
    )


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL the control database runs inside the block (and its commits, as COMMIT)."""
    seen: list[str] = []

    def run(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    def commit(_c: Any) -> None:
        seen.append("COMMIT")

    event.listen(db.engine, "before_cursor_execute", run)
    event.listen(db.engine, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", run)
        event.remove(db.engine, "commit", commit)
