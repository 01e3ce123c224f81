"""Encryption throughput of `encrypt_stream` against `openssl speed` at the same block size.

    .venv/bin/python bench/encryption.py [--mib 256] [--repeat 5] [--json]

Both are measured in this run on this machine; the ratio (ours / openssl) should be
>= 0.7. Prints medians and the peak RSS of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compliance.keyring import Keyring
from exporters.crypto import SEGMENT_SIZE, encrypt_stream, keyring_wrapper

GOAL = 0.7


def openssl_speed(seconds: int) -> float:
    """Bytes per second of `openssl speed -evp aes-256-gcm` on 64 KiB blocks."""
    out = subprocess.run(
        [
            "openssl",
            "speed",
            "-evp",
            "aes-256-gcm",
            "-bytes",
            str(SEGMENT_SIZE),
            "-seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^AES-256-GCM\s+([\d.]+)k\s*$", out, re.MULTILINE | re.IGNORECASE)
    if not match:
        raise SystemExit(f"could not parse openssl speed output:\n{out}")
    return float(match.group(1)) * 1000


def ours(mib: int) -> float:
    """Bytes per second of encrypt_stream over `mib` MiB fed in 64 KiB chunks."""
    keyring = Keyring({"bench": os.urandom(32)}, "bench", os.urandom(32))
    wrapper = keyring_wrapper(keyring)
    block = os.urandom(SEGMENT_SIZE)
    chunks = [block] * (mib * 1024 * 1024 // SEGMENT_SIZE)
    start = time.perf_counter()
    for _ in encrypt_stream(chunks, wrapper):
        pass
    return len(chunks) * SEGMENT_SIZE / (time.perf_counter() - start)


def bare_aesgcm(mib: int) -> float:
    """Bytes per second of the library primitive alone: AESGCM.encrypt on 64 KiB blocks,
    with the same OpenSSL build as ours (the `openssl` binary may be an older build)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(os.urandom(32))
    block = os.urandom(SEGMENT_SIZE)
    count = mib * 1024 * 1024 // SEGMENT_SIZE
    start = time.perf_counter()
    for counter in range(count):
        cipher.encrypt(counter.to_bytes(12, "big"), block, b"")
    return count * SEGMENT_SIZE / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="plaintext per run (MiB)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=1, help="duration of each openssl run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    anchor, measured, bare = [], [], []
    for _ in range(args.repeat):  # interleaved, so drift affects both sides alike
        anchor.append(openssl_speed(args.seconds))
        measured.append(ours(args.mib))
        bare.append(bare_aesgcm(args.mib))
    result = {
        "openssl_gb_s": round(statistics.median(anchor) / 1e9, 3),
        "ours_gb_s": round(statistics.median(measured) / 1e9, 3),
        "ratio": round(statistics.median(measured) / statistics.median(anchor), 3),
        "bare_aesgcm_gb_s": round(statistics.median(bare) / 1e9, 3),
        "ratio_vs_bare_aesgcm": round(statistics.median(measured) / statistics.median(bare), 3),
        "goal": GOAL,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "repeat": args.repeat,
        "mib_per_run": args.mib,
    }
    if args.json:
        print(json.dumps(result))
        return
    verdict = "meets" if result["ratio"] >= GOAL else "BELOW"
    print(
        f"encrypt_stream {result['ours_gb_s']} GB/s vs openssl {result['openssl_gb_s']} GB/s "
        f"(64 KiB blocks, medians of {args.repeat}): ratio {result['ratio']} "
        f"({verdict} goal {GOAL}); vs bare AESGCM.encrypt of the same library "
        f"{result['bare_aesgcm_gb_s']} GB/s: ratio {result['ratio_vs_bare_aesgcm']}; "
        f"peak RSS {result['peak_rss_mb']} MB"
    )


if __name__ == "__main__":
    main()
