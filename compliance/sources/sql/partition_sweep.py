"""The partition phase of a row policy on a range-partitioned PostgreSQL table.

Before rows are deleted one range at a time, whole partitions go at once: those whose
detach grace period is over are dropped, then those wholly past the cutoff are detached
(see `partitions`). A partition holding a row of a held subject stays attached (the row
path deletes its other expired rows), and is never dropped while a hold covers it; a hold
on the whole table keeps every partition. An erasure during the grace period deletes the
subject's rows from detached partitions too (`erase_detached`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from compliance.retention.policy import Held, Policy
from compliance.sources.base import Disposition
from compliance.sources.sql import partitions
from compliance.sources.sql.graph import Graph, SourceHandle
from compliance.sources.sql.retention import expired, held_rows
from compliance.sources.sql.subject import Subject


@dataclass(frozen=True)
class PartitionWork:
    detached: int = 0  # rows in the partitions detached now
    dropped: int = 0  # rows in the partitions dropped now
    kept: int = 0  # partitions past the cutoff kept attached for a legal hold


def applies(conn: Connection, schema: str | None, policy: Policy) -> bool:
    return conn.dialect.name == "postgresql" and partitions.range_partitioned(
        conn, schema, policy.location, policy.column
    )


def due(
    conn: Connection, graph: Graph, schema: str | None, policy: Policy, cutoff: datetime, held: Held
) -> tuple[list[partitions.Partition], int, int]:
    """Partitions a sweep at `cutoff` would detach, their rows, and how many a hold keeps."""
    parent = graph.tables[policy.location]
    holding = held_rows(graph, policy, held)
    found, rows, kept = [], 0, 0
    for part in partitions.due_partitions(
        partitions.partitions(conn, schema, policy.location), cutoff
    ):
        if held.whole or (
            holding is not None and partitions.holds_rows(conn, part, parent, holding)
        ):
            kept += 1
            continue
        found.append(part)
        rows += partitions.partition_rows(
            conn, part, parent=parent, where=expired(graph, policy, cutoff)
        )
    return found, rows, kept


def sweep(
    engine: Engine,
    graph: Graph,
    schema: str | None,
    policy: Policy,
    cutoff: datetime,
    held: Held,
    source: str,
) -> PartitionWork:
    """Drop what is past its grace period, then detach what is past the cutoff."""
    now = cutoff + timedelta(days=policy.days)
    parent = graph.tables[policy.location]
    holding = held_rows(graph, policy, held)

    def keep(conn: Connection, record: partitions.DetachedPartition) -> bool:
        return held.whole or (
            holding is not None and partitions.holds_rows(conn, record, parent, holding)
        )

    dropped = partitions.drop_expired(
        engine, schema, policy.location, now, 0, keep=keep, source=source
    )
    with engine.connect() as conn:
        todo, rows, kept = due(conn, graph, schema, policy, cutoff, held)
    for part in todo:
        partitions.detach(
            engine,
            schema,
            policy.location,
            part,
            policy=policy.name,
            now=now,
            grace_days=policy.grace_days,
            lock_timeout_ms=0,
            source=source,
        )
    return PartitionWork(detached=rows, dropped=dropped.rows, kept=kept)


def erase_detached(source: SourceHandle, schema: str | None, subject: Subject) -> int:
    """Delete the subject's rows from partitions detached for retention but not dropped
    yet (their grace period), so an erasure leaves nothing there either; how many.

    Run before the erasure proper: rows owned through a parent (a visit of a user) are
    found through that parent's keys, bound as lists, while the erasure has not deleted
    it yet. The records of detached partitions are read once for every table."""
    graph = source.graph
    deleted = 0
    with source.connect() as conn:
        if conn.dialect.name != "postgresql":
            return 0
        records = partitions.detached_by_parent(conn, schema)
        for table in graph.order:
            parts = records.get(graph.tables[table].name, [])
            if not parts or graph.rules[table].on_erase != Disposition.DELETE:
                continue
            for where in subject.match(conn, table):
                for part in parts:
                    deleted += partitions.delete_matching(conn, part, graph.tables[table], where)
    return deleted
