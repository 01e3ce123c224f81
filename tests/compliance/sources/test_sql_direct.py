"""Erasing a subject with more rows than a batch on PostgreSQL: the rows are found and
deleted on the server a batch at a time (`direct`), the other people's rows beside
them stay exactly as they were, and the checkpoint holds no keys."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from compliance.config import Settings
from compliance.errors import ResidualDataError
from compliance.identities import Identities, parse_identity
from compliance.sources.registry import Registry, load_registry
from compliance.sources.sql import direct
from compliance.sources.sql.source import SqlSource
from tests.compliance.sources.sqlsample import snapshot
from tests.compliance.sources.test_sql_statements import recorded
from tests.support.services import pg_database

SCHEMA = [
    "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL)",
    "CREATE INDEX ON users (lower(email))",
    "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users)",
    "CREATE INDEX ON orders (user_id)",
    "CREATE TABLE items (id bigserial PRIMARY KEY,"
    " order_id bigint NOT NULL REFERENCES orders, sku text)",
    "CREATE INDEX ON items (order_id)",
    # no foreign key: the manifest declares the reference, nothing in the database guards it
    "CREATE TABLE notes (id bigserial PRIMARY KEY, order_id bigint NOT NULL, body text)",
    "CREATE INDEX ON notes (order_id)",
    "CREATE TABLE logins (id bigserial PRIMARY KEY, email text NOT NULL, at int)",
    "CREATE INDEX ON logins (lower(email))",
    # partitioned: a row's address (ctid) repeats across partitions
    "CREATE TABLE visits (id bigint NOT NULL, user_id bigint NOT NULL, PRIMARY KEY (id))"
    " PARTITION BY RANGE (id)",
    "CREATE TABLE visits_low PARTITION OF visits FOR VALUES FROM (0) TO (1000)",
    "CREATE TABLE visits_high PARTITION OF visits FOR VALUES FROM (1000) TO (100000)",
    "CREATE INDEX ON visits (user_id)",
    # no index on the reference: a batch would scan the table
    "CREATE TABLE clicks (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users)",
]

MANIFEST = """
[sources.app]
kind = "sql"
url = "{url}"
[sources.app.tables.users]
identities = {{ id = "user_id", email = "email" }}
[sources.app.tables.orders]
[sources.app.tables.items]
[sources.app.tables.notes]
references = [{{ columns = "order_id", table = "orders", kind = "owned" }}]
[sources.app.tables.logins]
identities = {{ email = "email" }}
[sources.app.tables.visits]
references = [{{ columns = "user_id", table = "users", kind = "owned" }}]
[sources.app.tables.clicks]
"""

ANN = 1  # the subject; users 2 and 3 are other people with rows interleaved with hers
BATCH = 3
ORDERS = 7  # per user, each with two items and one note
LOGINS = 8
VISITS = 6
CLICKS = 5


def _ann() -> Identities:
    return Identities.of(
        [parse_identity("user_id", str(ANN)), parse_identity("email", "ann@example.com")]
    )


def _seed(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for ddl in SCHEMA:
                conn.execute(text(ddl))
            conn.execute(
                text(
                    "INSERT INTO users VALUES"
                    " (1, 'ann@example.com'), (2, 'ben@example.com'), (3, 'cy@example.com')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO orders (user_id) SELECT u"
                    " FROM generate_series(1, :n) k, generate_series(1, 3) u ORDER BY k, u"
                ),
                {"n": ORDERS},
            )
            conn.execute(
                text(
                    "INSERT INTO items (order_id, sku)"
                    " SELECT id, 'sku' FROM orders, generate_series(1, 2)"
                )
            )
            conn.execute(text("INSERT INTO notes (order_id, body) SELECT id, 'note' FROM orders"))
            conn.execute(
                text(
                    "INSERT INTO logins (email, at) SELECT"
                    " CASE u WHEN 1 THEN 'Ann@Example.com' WHEN 2 THEN 'ben@example.com'"
                    " ELSE 'cy@example.com' END, k"
                    " FROM generate_series(1, :n) k, generate_series(1, 3) u ORDER BY k, u"
                ),
                {"n": LOGINS},
            )
            conn.execute(
                text(
                    "INSERT INTO visits SELECT k * 300 + u, u"
                    " FROM generate_series(1, :n) k, generate_series(1, 3) u"
                ),
                {"n": VISITS},
            )
            conn.execute(
                text(
                    "INSERT INTO clicks (user_id) SELECT u"
                    " FROM generate_series(1, :n) k, generate_series(1, 3) u ORDER BY k, u"
                ),
                {"n": CLICKS},
            )
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


@pytest.fixture
def app_url() -> Iterator[str]:
    with pg_database("direct") as url:
        _seed(url)
        yield url


def _load(url: str, folder: Path) -> Registry:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sources.toml"
    path.write_text(MANIFEST.format(url=url), encoding="utf-8")
    settings = Settings(home=folder / ".gdpr", sources=str(path))
    return load_registry(settings, environ={}, pseudonym_key=b"k" * 32)


def _app(registry: Registry) -> SqlSource:
    app = registry.get("app")
    assert isinstance(app, SqlSource)
    _ = app.graph
    return app


def _erase(app: SqlSource, checkpoint: dict[str, Any] | None = None, steps: int = 10_000) -> Any:
    """Erase Ann for up to `steps` batches: (rows deleted, last checkpoint, done, every
    checkpoint seen)."""
    checkpoint = dict(checkpoint or {})
    deleted, seen = 0, []
    for _ in range(steps):
        result = app.erase(_ann(), checkpoint, BATCH)
        deleted += result.deleted
        checkpoint = dict(result.checkpoint)
        seen.append(checkpoint)
        if result.done:
            return deleted, checkpoint, True, seen
    return deleted, checkpoint, False, seen


def _theirs(state: dict[str, Any]) -> dict[str, Any]:
    """The rows of users 2 and 3 in a snapshot, by table (partitions under their table)."""
    owner = {row["id"]: row["user_id"] for row in state["orders"].values()}
    found: dict[str, Any] = {}
    for table, rows in _tables(state).items():
        kept = {}
        for key, row in rows.items():
            if table == "users":
                who = row["id"]
            elif "user_id" in row:
                who = row["user_id"]
            elif "order_id" in row:
                who = owner[row["order_id"]]
            elif "email" in row:
                who = ANN if row["email"].lower() == "ann@example.com" else 0
            else:
                who = 0
            if who != ANN:
                kept[key] = row
        found[table] = kept
    return found


def _anns(state: dict[str, Any]) -> int:
    """How many rows of Ann's a snapshot holds."""
    every = sum(len(rows) for rows in _tables(state).values())
    return every - sum(len(rows) for rows in _theirs(state).values())


def _tables(state: dict[str, Any]) -> dict[str, Any]:
    return {t: rows for t, rows in state.items() if not t.startswith("visits_")}


def test_a_subject_with_more_rows_than_a_batch_goes_in_server_side_batches_and_nobody_else_changes(
    app_url: str, tmp_path: Path
) -> None:
    before = snapshot(app_url)
    registry = _load(app_url, tmp_path)
    try:
        app = _app(registry)
        with recorded(app.engine) as seen:
            deleted, _, done, checkpoints = _erase(app)
    finally:
        registry.close()
    after = snapshot(app_url)
    assert done
    assert deleted == _anns(before)  # every row of hers counted once
    assert _anns(after) == 0
    assert _theirs(after) == _theirs(before)  # nobody else's row changed or went
    shapes = {_shape(statement) for statement, _ in seen}
    for table in ("orders", "items", "notes", "logins"):
        assert f"direct {table}" in shapes, shapes  # more rows of hers than a batch
    for table in ("visits", "clicks"):  # partitioned; unindexed reference: key lists
        assert f"direct {table}" not in shapes
        assert f"keys {table}" in shapes
    for checkpoint in checkpoints:  # small: no key lists
        assert checkpoint.get("after") is None
        assert not checkpoint.get("orphans")


def _shape(statement: str) -> str:
    found = re.match(r"DELETE FROM (\w+) WHERE \w+\.ctid = ANY", statement)
    if found:
        return f"direct {found.group(1)}"
    found = re.match(r"DELETE FROM (\w+) WHERE", statement)
    return f"keys {found.group(1)}" if found else ""


def test_a_run_resumed_elsewhere_from_its_checkpoint_mid_table_finishes_the_erasure(
    app_url: str, tmp_path: Path
) -> None:
    before = snapshot(app_url)
    first = _load(app_url, tmp_path / "first")
    try:
        deleted, checkpoint, done, _ = _erase(_app(first), steps=4)  # mid-way through items
    finally:
        first.close()
    assert not done
    again = _load(app_url, tmp_path / "again")  # another process: nothing in memory
    try:
        more, _, done, _ = _erase(_app(again), checkpoint)
    finally:
        again.close()
    after = snapshot(app_url)
    assert done
    assert _anns(after) == 0
    assert _theirs(after) == _theirs(before)
    assert deleted + more == _anns(before)


def test_a_row_written_under_an_erased_parent_meanwhile_is_found_before_the_parent_goes(
    app_url: str, tmp_path: Path
) -> None:
    """Ann's first order lost its notes in the first batches; a note written for it
    afterwards (no foreign key guards notes) is found when the table is checked, and
    deleted in another pass, before the orders go."""
    registry = _load(app_url, tmp_path)
    try:
        app = _app(registry)
        graph = app.graph
        checkpoint: dict[str, Any] = {}
        wrote = False
        for _ in range(1000):
            result = app.erase(_ann(), checkpoint, BATCH)
            checkpoint = dict(result.checkpoint)
            at = checkpoint.get("table")
            table = graph.order[at] if at is not None and at < len(graph.order) else None
            under_way = table == "notes" and result.deleted
            if under_way and not wrote:  # write a note for an order whose notes went
                with app.engine.begin() as conn:
                    conn.execute(
                        text(
                            "INSERT INTO notes (order_id, body) SELECT min(id), 'late'"
                            " FROM orders WHERE user_id = :u"
                        ),
                        {"u": ANN},
                    )
                wrote = True
            if table == "orders":
                assert _notes_of(app_url, ANN) == 0  # nothing of hers left under the orders
            if result.done:
                break
    finally:
        registry.close()
    assert wrote
    assert _notes_of(app_url, ANN) == 0


def _notes_of(url: str, user: int) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(*) FROM notes n JOIN orders o ON o.id = n.order_id"
                        " WHERE o.user_id = :u"
                    ),
                    {"u": user},
                ).scalar_one()
            )
    finally:
        engine.dispose()


class _Session:
    """A pure stand-in for the held connection: every batch deletes nothing new, and
    every check finds a row still there (rows that keep changing)."""

    def __init__(self) -> None:
        self.deletes = 0

    def rows(self, stmt: Any) -> list[tuple[Any, ...]]:
        return [(1,)]

    def count(self, stmt: Any, params: dict[str, Any]) -> int:
        self.deletes += 1
        return 0


def test_rows_that_keep_changing_while_they_are_deleted_stop_the_table_after_a_few_passes(
    app_url: str, tmp_path: Path
) -> None:
    registry = _load(app_url, tmp_path)
    try:
        graph = _app(registry).graph
    finally:
        registry.close()
    expr = graph.tables["logins"].c.email
    part = direct.Part(expr, direct.select(expr), ["ann@example.com"])
    run = direct.Direct("app", graph, "logins", [part])
    session = _Session()
    with pytest.raises(ResidualDataError, match="kept changing"):
        for _ in range(100):
            run.step(session, BATCH)
    assert session.deletes == direct.MAX_PASSES  # one batch per pass, then the check
