"""Erasure throughput of the redis and objectstore connectors against hand-written loops.

    .venv/bin/python bench/connectors.py [--keys 100000] [--objects 3000] [--repeat 3] [--json]

Redis: one subject with `--keys` keys (``session:1:<n>``) among as many of another user;
the connector's chunked erase (batch 1000) against a bare ``SCAN MATCH`` + ``UNLINK``
loop. S3: `--objects` objects under the subject's prefix; the connector against a bare
``ListObjectsV2`` + ``DeleteObjects`` loop. Fresh data for every run, medians of
`--repeat`. Also the peak Python heap while exporting one 64 MiB object (streamed: it
must stay far below the object's size). Services: GDPR_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/15, flushed) and GDPR_BENCH_S3_URL (default http://127.0.0.1:9000).
Goal: connector time within 1.5x of the bare loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
import redis

from compliance.config import Settings
from compliance.identities import Identities, Identity
from compliance.sources.base import DataSource, FileItem
from compliance.sources.objectstore import build as build_objectstore
from compliance.sources.rediskeys import build as build_redis

GOAL = 1.5
SUBJECT = Identities.of([Identity("user_id", "1")])
REDIS_URL = os.environ.get("GDPR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
S3_URL = os.environ.get("GDPR_BENCH_S3_URL", "http://127.0.0.1:9000")
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ.setdefault(_name, "test")  # the local S3 server accepts any credentials


def erase_with(source: DataSource) -> int:
    checkpoint: Any = {}
    total = 0
    while True:
        result = source.erase(SUBJECT, checkpoint, 1000)
        total += result.deleted
        checkpoint = result.checkpoint
        if result.done:
            return total


def timed(seed: Callable[[], None], run: Callable[[], int], expected: int) -> float:
    seed()
    start = time.perf_counter()
    deleted = run()
    elapsed = time.perf_counter() - start
    assert deleted == expected, (deleted, expected)
    return elapsed


# --- redis ----------------------------------------------------------------------------------


def bench_redis(keys: int, repeat: int) -> dict[str, float]:
    client = redis.Redis.from_url(REDIS_URL)
    source = build_redis(
        "bench", {"url": REDIS_URL, "patterns": ["session:{user_id}:*"]}, Settings()
    )

    def seed() -> None:
        client.flushdb()
        with client.pipeline(transaction=False) as pipe:
            for i in range(keys):
                pipe.set(f"session:1:{i}", "x")
                pipe.set(f"session:2:{i}", "y")
            pipe.execute()

    def bare() -> int:
        deleted, batch = 0, []
        for key in client.scan_iter(match="session:1:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                deleted += client.unlink(*batch)
                batch = []
        return deleted + (client.unlink(*batch) if batch else 0)

    ours = [timed(seed, lambda: erase_with(source), keys) for _ in range(repeat)]
    anchor = [timed(seed, bare, keys) for _ in range(repeat)]
    client.flushdb()
    source.close()
    client.close()
    return _result(keys, ours, anchor)


# --- s3 -------------------------------------------------------------------------------------


def bench_s3(objects: int, repeat: int) -> tuple[dict[str, float], float]:
    s3 = boto3.client("s3", endpoint_url=S3_URL, region_name="us-east-1")
    bucket = f"gdpr-bench-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    spec = {"bucket": bucket, "endpoint_url": S3_URL, "prefixes": ["avatars/{user_id}/"]}
    source = build_objectstore("bench", spec, Settings())

    def seed() -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"avatars/1/{i}", Body=b"x"),
                          range(objects)))  # fmt: skip

    def bare() -> int:
        deleted = 0
        while True:
            page = s3.list_objects_v2(Bucket=bucket, Prefix="avatars/1/", MaxKeys=1000)
            ids = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if not ids:
                return deleted
            s3.delete_objects(Bucket=bucket, Delete={"Objects": ids, "Quiet": True})
            deleted += len(ids)

    ours = [timed(seed, lambda: erase_with(source), objects) for _ in range(repeat)]
    anchor = [timed(seed, bare, objects) for _ in range(repeat)]
    peak = export_peak(s3, bucket, source)
    source.close()
    s3.close()
    return _result(objects, ours, anchor), peak


def export_peak(s3: Any, bucket: str, source: DataSource) -> float:
    """Peak Python heap (MiB) while streaming a 64 MiB object through export()."""
    size = 64 * 1024 * 1024
    s3.put_object(Bucket=bucket, Key="avatars/1/big.bin", Body=os.urandom(size))
    tracemalloc.start()
    total = 0
    for item in source.export(SUBJECT):
        if isinstance(item, FileItem):
            total += sum(len(chunk) for chunk in item.chunks())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == size
    return peak / 2**20


def _result(count: int, ours: list[float], anchor: list[float]) -> dict[str, float]:
    mine, bare = statistics.median(ours), statistics.median(anchor)
    return {"count": count, "ours_s": mine, "bare_s": bare, "ours_per_s": count / mine,
            "bare_per_s": count / bare, "ratio": mine / bare}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"redis": bench_redis(args.keys, args.repeat)}
    results["s3"], results["export_peak_mib"] = bench_s3(args.objects, args.repeat)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name in ("redis", "s3"):
            r = results[name]
            print(
                f"{name:5} erase {r['count']:>7}: ours {r['ours_per_s']:9.0f}/s, bare "
                f"{r['bare_per_s']:9.0f}/s, time ratio {r['ratio']:.2f} (goal <= {GOAL})"
            )
        print(f"export of a 64 MiB object: peak Python heap {results['export_peak_mib']:.1f} MiB")
    ok = all(results[n]["ratio"] <= GOAL for n in ("redis", "s3"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
