"""A small app with data of every age, for retention: accounts (some closed), their
sessions and activity, and a ledger kept by law. Ages are relative to `NOW`.

    users         id, email, closed_at           1-6; 4 closed 2 years ago, 5 closed
                                                 2 years ago, 6 closed last month
    sessions      id, user_id -> users, created_at   per user: 3 aged 40 days, 2 aged 5
    activity      id, user_id, kind, at          per user: "view" and "order" aged 60
                  (no FK)                        days, "view" aged 1 day
    ledger        id, user_id -> users, booked_at    kept 10 years by law
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
)

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
USERS = 6
CLOSED_LONG_AGO = (4, 5)

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(200)),
    Column("closed_at", DateTime(timezone=True)),
)
sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("users.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
activity = Table(
    "activity",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("users.id")),
    Column("booked_at", DateTime(timezone=True), nullable=False),
)

MANIFEST = """\
[sources.app]
kind = "sql"
url = "{url}"

[sources.app.tables.users]
identities = {{ email = "email", id = "user_id" }}
retention = {{ column = "closed_at", days = 365, scope = "subject" }}

[sources.app.tables.sessions]
retention = {{ column = "created_at", days = 30 }}

[sources.app.tables.activity]
references = [{{ columns = "user_id", table = "users", kind = "owned" }}]
retention = {{ column = "at", days = 30, where = {{ kind = "view" }} }}

[sources.app.tables.ledger]
on_erase = "anonymize"
anonymize = {{ user_id = "null" }}
legal_basis = "Art. 6(1)(c) GDPR: bookkeeping law"
legal_retention_days = 3650
{extra}
"""


def email(user: int) -> str:
    return f"user{user}@example.com"


def create(url: str, now: datetime = NOW) -> None:
    """The tables and rows, aged relative to `now`."""
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(users), [_user(u, now) for u in range(1, USERS + 1)])
        conn.execute(insert(sessions), list(_sessions(now)))
        conn.execute(insert(activity), list(_activity(now)))
        booked = now - timedelta(days=400)
        conn.execute(
            insert(ledger),
            [{"id": u, "user_id": u, "booked_at": booked} for u in range(1, USERS + 1)],
        )
    engine.dispose()


def _user(user: int, now: datetime) -> dict[str, object]:
    closed = None
    if user in CLOSED_LONG_AGO:
        closed = now - timedelta(days=730)
    elif user == USERS:
        closed = now - timedelta(days=30)
    return {"id": user, "email": email(user), "closed_at": closed}


def _sessions(now: datetime = NOW) -> Iterator[dict[str, Any]]:
    key = 0
    for user in range(1, USERS + 1):
        for age in (40, 40, 40, 5, 5):
            key += 1
            yield {"id": key, "user_id": user, "created_at": now - timedelta(days=age, hours=key)}


def _activity(now: datetime) -> Iterator[dict[str, Any]]:
    key = 0
    for user in range(1, USERS + 1):
        for kind, age in (("view", 60), ("order", 60), ("view", 1)):
            key += 1
            yield {"id": key, "user_id": user, "kind": kind, "at": now - timedelta(days=age)}


def expired_sessions(user: int | None = None) -> set[int]:
    """Keys of sessions older than 30 days (of one user, or all)."""
    return {
        int(row["id"])
        for row in _sessions()
        if row["created_at"] < NOW - timedelta(days=30) and user in (None, row["user_id"])
    }
