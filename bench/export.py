"""Full export (package + encrypt + upload) against a raw boto3 upload of the same size.

    .venv/bin/python bench/export.py [--size 1G] [--repeat 3] [--endpoint URL] [--json]

Both run in this invocation against the same S3 endpoint (default: the local test server
on 127.0.0.1:9000), each in a fresh child process so peak RSS is measured per side. The
subject has rows (about 5% of the bytes: JSON + CSV) and files. Goal: throughput ratio
(ours / raw upload_file) >= 0.7 and our peak RSS < 256 MB whatever --size is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_RATIO = 0.7
GOAL_RSS_MB = 256
FILE_BYTES = 64 * 1024 * 1024
ROW_SHARE = 0.05


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    )


def subject(size: int, row_share: float = ROW_SHARE) -> Iterator[object]:
    """A synthetic subject: rows first (`row_share` of the bytes, as JSON), then files."""
    from compliance.sources.base import Art15, FileItem, RowsItem

    row_bytes = int(size * row_share)
    rows_wanted = max(1, row_bytes // 200)
    meta = Art15(description="Messages", purpose="Messaging", legal_basis="Contract")

    def rows() -> Iterator[dict[str, object]]:
        now = datetime(2026, 1, 1, tzinfo=UTC)
        for i in range(rows_wanted):
            yield {"id": i, "sent_at": now, "body": f"message {i} " + "lorem ipsum " * 12}

    yield RowsItem("app", "messages", rows(), meta)
    block = os.urandom(1 << 20)  # incompressible, like photos and PDFs
    remaining = size - row_bytes
    number = 0
    while remaining > 0:
        length = min(FILE_BYTES, remaining)

        def chunks(length: int = length) -> Iterator[bytes]:
            for start in range(0, length, len(block)):
                yield block[: min(len(block), length - start)]

        yield FileItem("files", f"uploads/{number}.bin", chunks, length, meta)
        remaining -= length
        number += 1


def child_ours(endpoint: str, bucket: str, size: int, row_share: float) -> dict[str, float]:
    from compliance.keyring import Keyring
    from exporters.crypto import encrypt_stream, keyring_wrapper
    from exporters.package import write_package
    from exporters.s3 import S3Storage

    wrapper = keyring_wrapper(Keyring({"bench": os.urandom(32)}, "bench", os.urandom(32)))
    storage = S3Storage(client(endpoint), bucket)
    key = f"bench/{uuid.uuid4()}.zip.enc"
    start = time.perf_counter()
    package = write_package(
        subject(size, row_share), request_id=uuid.uuid4(), generated_at=datetime.now(UTC)
    )  # type: ignore[arg-type]
    written = storage.upload(key, encrypt_stream(package, wrapper))
    seconds = time.perf_counter() - start
    storage.delete(key)
    return {"bytes": written, "seconds": seconds}


def child_anchor(endpoint: str, bucket: str, size: int, row_share: float) -> dict[str, float]:
    s3 = client(endpoint)
    key = f"bench/{uuid.uuid4()}.raw"
    block = os.urandom(1 << 20)
    with tempfile.NamedTemporaryFile(prefix="gdpr-bench-") as handle:
        for start in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - start)])
        handle.flush()
        start = time.perf_counter()
        s3.upload_file(handle.name, bucket, key)
        seconds = time.perf_counter() - start
    s3.delete_object(Bucket=bucket, Key=key)
    return {"bytes": size, "seconds": seconds}


def run_child(
    side: str, endpoint: str, bucket: str, size: int, row_share: float
) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--row-share",
        str(row_share),
        "--child",
        side,
        "--endpoint",
        endpoint,
        "--bucket",
        bucket,
        "--size",
        str(size),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="subject size, e.g. 200M or 1G")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoint", default="http://127.0.0.1:9000")
    parser.add_argument("--bucket", default="")
    parser.add_argument("--row-share", type=float, default=ROW_SHARE, help="share of rows")
    parser.add_argument("--child", choices=["ours", "anchor"], help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    if args.child:
        result = (child_ours if args.child == "ours" else child_anchor)(
            args.endpoint, args.bucket, size, args.row_share
        )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_rss_mb"] = usage.ru_maxrss / 1024
        result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
        print(json.dumps(result))
        return
    bucket = args.bucket or f"gdpr-bench-{uuid.uuid4().hex[:10]}"
    if not args.bucket:
        client(args.endpoint).create_bucket(Bucket=bucket)
    ours, anchor = [], []
    for _ in range(args.repeat):  # interleaved, so drift affects both sides alike
        anchor.append(run_child("anchor", args.endpoint, bucket, size, args.row_share))
        ours.append(run_child("ours", args.endpoint, bucket, size, args.row_share))
    report(ours, anchor, size, args)


def report(
    ours: list[dict[str, float]],
    anchor: list[dict[str, float]],
    size: int,
    args: argparse.Namespace,
) -> None:
    ours_mb_s = statistics.median(r["bytes"] / r["seconds"] for r in ours) / 1e6
    anchor_mb_s = statistics.median(r["bytes"] / r["seconds"] for r in anchor) / 1e6
    result = {
        "size_bytes": size,
        "row_share": args.row_share,
        "ours_mb_s": round(ours_mb_s, 1),
        "anchor_mb_s": round(anchor_mb_s, 1),
        "ratio": round(ours_mb_s / anchor_mb_s, 3),
        "ours_peak_rss_mb": round(max(r["peak_rss_mb"] for r in ours), 1),
        "anchor_peak_rss_mb": round(max(r["peak_rss_mb"] for r in anchor), 1),
        "ours_seconds_median": round(statistics.median(r["seconds"] for r in ours), 2),
        "anchor_seconds_median": round(statistics.median(r["seconds"] for r in anchor), 2),
        "ours_cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in ours), 2),
        "anchor_cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in anchor), 2),
        "repeat": args.repeat,
        "goal_ratio": GOAL_RATIO,
        "goal_rss_mb": GOAL_RSS_MB,
    }
    if args.json:
        print(json.dumps(result))
        return
    ok = result["ratio"] >= GOAL_RATIO and result["ours_peak_rss_mb"] < GOAL_RSS_MB
    print(
        f"export of {size / 2**20:.0f} MiB ({args.row_share:.0%} rows): {result['ours_mb_s']} MB/s "
        f"(package+encrypt+upload) vs raw upload_file {result['anchor_mb_s']} MB/s, "
        f"medians of {args.repeat}: ratio {result['ratio']} (goal {GOAL_RATIO}); "
        f"peak RSS ours {result['ours_peak_rss_mb']} MB (goal < {GOAL_RSS_MB}), "
        f"anchor {result['anchor_peak_rss_mb']} MB -> {'meets goals' if ok else 'BELOW GOAL'}"
    )


if __name__ == "__main__":
    main()
