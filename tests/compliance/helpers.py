"""Small builders shared by the compliance tests."""

from __future__ import annotations

from datetime import UTC, datetime

from compliance.config import Settings
from compliance.db import Database
from compliance.dispatch import RecordingDispatcher
from compliance.identities import Identities, parse_identity
from compliance.keyring import load_keyring
from compliance.models import DsrRequest, RequestKind
from compliance.requests import Submission, submit

NOW = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


def ada() -> Identities:
    return Identities.of(
        [parse_identity("email", "ada@example.com"), parse_identity("user_id", "1")]
    )


def submit_request(
    db: Database,
    settings: Settings,
    kind: RequestKind = RequestKind.ERASURE,
    *,
    operator: str = "alice",
    dispatcher: RecordingDispatcher | None = None,
) -> DsrRequest:
    return submit(
        db,
        settings,
        load_keyring(settings),
        Submission(kind=kind, identities=ada(), ticket="T-1"),
        operator=operator,
        now=NOW,
        dispatcher=dispatcher or RecordingDispatcher(),
    )
