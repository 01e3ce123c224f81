"""The quick-start demo: an export and an erasure on the embedded defaults, with a real worker.

    bash ops/demo.sh        (installs, then runs this)

Everything lives in .gdpr-demo/: a sample shop and CRM (SQLite), the control database, the
SQLite-backed Celery broker, object storage and the email outbox. No servers needed.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".gdpr-demo"
GDPR = str(Path(sys.executable).with_name("gdpr"))
ADA = "ada@example.com"

sys.path.insert(0, str(ROOT))


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def demo_env(operator: str = "alice") -> dict[str, str]:
    return {
        **os.environ,
        "GDPR_HOME": str(DEMO / ".gdpr"),
        "GDPR_OPERATOR": operator,
        "GDPR_SOURCES": str(DEMO / "sources.toml"),
    }


def gdpr(
    *args: str, operator: str = "alice", parse: bool = True, ok: tuple[int, ...] = (0,)
) -> Any:
    env = {
        **os.environ,
        "GDPR_HOME": str(DEMO / ".gdpr"),
        "GDPR_OPERATOR": operator,
        "GDPR_SOURCES": str(DEMO / "sources.toml"),
    }
    argv = [GDPR, *args, *(["--json"] if parse else [])]
    done = subprocess.run(argv, cwd=DEMO, env=env, capture_output=True, text=True, check=False)
    if done.returncode not in ok:
        sys.exit(f"gdpr {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout) if parse else done.stdout


def build_sample_app() -> None:
    from sqlalchemy import create_engine

    from tests.sample_app import schema

    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    shop, crm = (f"sqlite:///{DEMO / name}" for name in ("shop.db", "crm.db"))
    engines = [create_engine(shop), create_engine(crm)]
    schema.create(*engines)
    for engine in engines:
        engine.dispose()
    manifest = schema.manifest(shop, crm)
    for table, column in (("sessions", "created_at"), ("activity_log", "at")):
        header = f"[sources.shop.tables.{table}]\n"
        policy = f'retention = {{ column = "{column}", days = 30 }}\n'
        manifest = manifest.replace(header, header + policy)
    (DEMO / "sources.toml").write_text(manifest, encoding="utf-8")


def start_worker() -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GDPR_HOME": str(DEMO / ".gdpr"),
        "GDPR_SOURCES": str(DEMO / "sources.toml"),
    }
    with (DEMO / "worker.log").open("ab") as log:
        worker = subprocess.Popen(
            [GDPR, "worker", "-c", "1"], cwd=DEMO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while "ready." not in (DEMO / "worker.log").read_text(errors="replace"):
        if time.monotonic() > deadline or worker.poll() is not None:
            sys.exit(f"the worker did not start; see {DEMO / 'worker.log'}")
        time.sleep(0.2)
    return worker


def wait(request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        shown = gdpr("request", "show", request_id)
        if shown["status"] in {"completed", "failed"} or time.monotonic() > deadline:
            return shown  # type: ignore[no-any-return]
        time.sleep(0.5)


def shop_rows(user_id: int) -> dict[str, int]:
    with sqlite3.connect(DEMO / "shop.db") as conn:
        return {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE user_id = ?",  # noqa: S608
                (user_id,),
            ).fetchone()[0]
            for table in ("orders", "sessions", "profiles")
        }


def show_export() -> None:
    outbox = sorted((DEMO / ".gdpr" / "outbox").glob("*.eml"))
    message = email.message_from_bytes(outbox[0].read_bytes())
    print(f"email in the outbox: {message['Subject']!r} ({len(outbox)} message(s))")
    package = next((DEMO / ".gdpr" / "objects").rglob("*.zip.enc"))
    out = DEMO / "ada-export.zip"
    gdpr("export", "decrypt", str(package), "-o", str(out), "--force")
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    print(
        f"encrypted package {package.name}: {package.stat().st_size} bytes; decrypted: "
        f"{len(names)} files"
    )
    for name in names[:12]:
        print(f"  {name}")


def retention() -> None:
    say("Retention: sessions and activity logs older than 30 days; a legal hold on the logs")
    hold = gdpr(
        "hold",
        "add",
        "--source",
        "shop",
        "--table",
        "activity_log",
        "--reason",
        "DEMO-3 security review",
        "--basis",
        "Art. 17(3)(e) GDPR: legal claims",
    )
    print(f"legal hold {hold['id']} on shop.activity_log ({hold['basis']})")
    print(gdpr("retention", "plan", parse=False).rstrip())
    print(gdpr("retention", "run", parse=False).rstrip())
    print(gdpr("retention", "report", parse=False, ok=(0, 1)).rstrip())


def main() -> None:
    say("Building a sample shop and CRM (SQLite) with four customers")
    build_sample_app()
    print(gdpr("sources", "list", parse=False).rstrip())
    say("What an erasure of ada@example.com would do (nothing is changed)")
    print(gdpr("request", "plan", "--email", ADA, parse=False).rstrip())
    say("Starting a Celery worker on the embedded broker")
    worker = start_worker()
    try:
        say("Export (Art. 15): submitted by alice, auto-approved, run by the worker")
        export = gdpr("request", "export", "--email", ADA, "--ticket", "DEMO-1")
        done = wait(export["id"])
        print(f"export {done['id']}: {done['status']} {done['last_error'] or ''}")
        show_export()
        say("Erasure (Art. 17): submitted by alice, approved by bob (four-eyes)")
        erasure = gdpr("request", "erase", "--email", ADA, "--ticket", "DEMO-2")
        refused = subprocess.run(
            [GDPR, "request", "approve", erasure["id"]],
            cwd=DEMO,
            env=demo_env("alice"),
            capture_output=True,
            text=True,
            check=False,
        )
        print(f"alice approving her own request: {refused.stderr.strip()}")
        gdpr("request", "approve", erasure["id"], operator="bob")
        done = wait(erasure["id"])
        print(gdpr("request", "show", erasure["id"], parse=False).rstrip())
        say("Rows left in the shop")
        print(f"ada (user 1): {shop_rows(1)}")
        print(f"bob (user 2): {shop_rows(2)}")
        retention()
        say("Audit trail")
        print(gdpr("audit", "verify", parse=False, ok=(0, 1)).rstrip())
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    print(
        f"\nEverything is in {DEMO}. Try:\n  cd {DEMO} && GDPR_HOME=.gdpr "
        f"GDPR_SOURCES=sources.toml {GDPR} request list"
    )


if __name__ == "__main__":
    main()
