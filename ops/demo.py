"""The quick-start demo: an export and an erasure on the embedded defaults, with a real
Celery worker and the download service, ending with what to do next.

    bash ops/demo.sh [--serve-seconds 60] [--port 8080] [--dir .gdpr-demo]

Everything lives in .gdpr-demo/: a sample shop and CRM (SQLite), the demo's gdpr.toml, the
control database, the SQLite-backed Celery broker, object storage and the email outbox. No
servers needed. GDPR_* variables of the calling shell are ignored (gdpr.toml says it all),
so the demo never touches another installation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # .venv/bin, where `gdpr` lives
GDPR = str(BIN / "gdpr")
ADA, BOB = "ada@example.com", "bob@example.com"
TTY = sys.stdout.isatty()
SETTLED = {"completed", "failed", "rejected", "cancelled", "on_hold"}
WAIT_SECONDS = 120  # a request of the demo is done in seconds; this long means trouble

sys.path.insert(0, str(ROOT))

from ops.demo_output import (  # noqa: E402 (after the path is set)
    Mail,
    fit,
    mails_to,
    progress_line,
    read_outbox,
    receipt_in_words,
)

if TYPE_CHECKING:
    from compliance.db import Database


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if TTY else f"\n== {text}", flush=True)


@dataclass
class Demo:
    """The demo's folder, its settings and the processes it started."""

    folder: Path
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.folder / ".gdpr"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, operator: str = "alice") -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
        return {**kept, "GDPR_CONFIG": str(self.folder / "gdpr.toml"), "GDPR_OPERATOR": operator}

    def run(self, *args: str, operator: str = "alice") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [GDPR, *args],
            cwd=self.folder,
            env=self.env(operator),
            capture_output=True,
            text=True,
            check=False,
        )

    def gdpr(
        self, *args: str, operator: str = "alice", parse: bool = True, ok: tuple[int, ...] = (0,)
    ) -> Any:
        done = self.run(*args, *(["--json"] if parse else []), operator=operator)
        if done.returncode not in ok:
            sys.exit(f"gdpr {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return json.loads(done.stdout) if parse else done.stdout.rstrip()

    def start(self, name: str, *args: str, ready: str) -> None:
        """Start `gdpr <args>` in the background, logging to <name>.log, until `ready`."""
        log_path = self.folder / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [GDPR, *args], cwd=self.folder, env=self.env(), stdout=log, stderr=log
            )
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while ready not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or process.poll() is not None:
                sys.exit(f"gdpr {args[0]} did not start; see {log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            process.wait(timeout=60)
        if "db" in self.__dict__:
            self.db.dispose()

    @cached_property
    def db(self) -> Database:
        """The control database, read directly (the service layer) to show live progress."""
        from compliance.config import load_settings
        from compliance.db import Database

        return Database.connect(load_settings(environ=self.env()))


# --- the sample and its settings -----------------------------------------------------------


def build_sample_app(demo: Demo) -> None:
    from sqlalchemy import create_engine

    from tests.sample_app import schema

    shutil.rmtree(demo.folder, ignore_errors=True)
    demo.folder.mkdir(parents=True)
    shop, crm = (f"sqlite:///{demo.folder / name}" for name in ("shop.db", "crm.db"))
    engines = [create_engine(shop), create_engine(crm)]
    schema.create(*engines)
    for engine in engines:
        engine.dispose()
    manifest = schema.manifest(shop, crm)
    for table, column in (("sessions", "created_at"), ("activity_log", "at")):
        header = f"[sources.shop.tables.{table}]\n"
        policy = f'retention = {{ column = "{column}", days = 30 }}\n'
        manifest = manifest.replace(header, header + policy)
    (demo.folder / "sources.toml").write_text(manifest, encoding="utf-8")
    settings = {
        "home": str(demo.home),
        "sources": str(demo.folder / "sources.toml"),
        "serve_port": demo.port,
        "base_url": demo.base_url,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    (demo.folder / "gdpr.toml").write_text(
        "# The demo's settings (README.md#configuration); GDPR_* variables override them.\n"
        "[gdpr]\n" + "\n".join(lines) + "\n",
        encoding="utf-8",
    )


def pick_port(wanted: int) -> int:
    """`wanted` if it is free, else any free port."""
    for port in (wanted, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise SystemExit("no free port for the download service")


def shop_rows(demo: Demo, user_id: int) -> dict[str, int]:
    with sqlite3.connect(demo.folder / "shop.db") as conn:
        return {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE user_id = ?",  # noqa: S608
                (user_id,),
            ).fetchone()[0]
            for table in ("orders", "sessions", "profiles")
        }


# --- waiting, with progress ----------------------------------------------------------------


def follow(demo: Demo, request_id: str) -> dict[str, Any]:
    """Wait for a request to settle, showing its steps as they go: one live line on a
    terminal, a plain line per change otherwise."""
    from compliance import queries

    deadline = time.monotonic() + WAIT_SECONDS
    shown = ""
    while True:
        found, steps, _ = queries.show(demo.db, uuid.UUID(request_id))
        view = queries.describe(found, steps)
        line = progress_line(view)
        if line != shown:
            live(line)
            shown = line
        if view["status"] in SETTLED:
            break
        if time.monotonic() > deadline:
            live_done()
            sys.exit(f"request {request_id} still {view['status']} after {WAIT_SECONDS} s")
        time.sleep(0.3)
    live_done()
    return view


def live(line: str) -> None:
    if TTY:
        width = shutil.get_terminal_size().columns
        sys.stdout.write("\r\033[K" + fit(line, width))
        sys.stdout.flush()
    else:
        print(line, flush=True)


def live_done() -> None:
    if TTY:
        print()


def answers(url: str) -> int:
    """The HTTP status a link's landing page answers with (it counts no download)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http only)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# --- the story ----------------------------------------------------------------------------


def export(demo: Demo, address: str, ticket: str) -> tuple[str, Mail]:
    """Submit an export, follow it; its id and the subject's email with the link."""
    submitted = demo.gdpr("request", "export", "--email", address, "--ticket", ticket)
    done = follow(demo, submitted["id"])
    if done["status"] != "completed":
        sys.exit(f"the export ended {done['status']}; see {demo.folder / 'worker.log'}")
    mail = mails_to(read_outbox(demo.home / "outbox"), address)[-1]
    print(f"email to {address}: {mail.subject!r} ({mail.path})")
    print(f"download link: {mail.link} (the landing page answers {answers(str(mail.link))})")
    return submitted["id"], mail


def show_package(demo: Demo, request_id: str) -> None:
    package = next((demo.home / "objects").rglob(f"{request_id}*.zip.enc"))
    out = demo.folder / "ada-export.zip"
    demo.gdpr("export", "decrypt", str(package), "-o", str(out), "--force")
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
    print(f"encrypted package: {package.stat().st_size} bytes; decrypted by an operator into")
    print(f"{out}: {len(names)} files, index.html first")
    for name in names[:8]:
        print(f"  {name}")


def erasure(demo: Demo, ada_link: str) -> dict[str, Any]:
    """Submit Ada's erasure, approve it as a second operator, follow it; its view."""
    say("Erasure (Art. 17): submitted by alice, approved by bob (four-eyes)")
    submitted = demo.gdpr("request", "erase", "--email", ADA, "--ticket", "DEMO-2")
    refused = demo.run("request", "approve", submitted["id"])
    print(f"alice approving her own request: {refused.stderr.strip().splitlines()[-1]}")
    demo.gdpr("request", "approve", submitted["id"], operator="bob")
    done = follow(demo, submitted["id"])
    print(demo.gdpr("request", "show", submitted["id"], parse=False, ok=(0, 1)))
    mail = mails_to(read_outbox(demo.home / "outbox"), ADA)[-1]
    print(f"email to {ADA}: {mail.subject!r} ({mail.path})")
    print(f"her export link now answers {answers(ada_link)}: the package is deleted")
    return done


def retention(demo: Demo) -> None:
    say("Retention: sessions and activity logs older than 30 days; a legal hold on the logs")
    hold = demo.gdpr(
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
    print(demo.gdpr("retention", "plan", parse=False))
    print(demo.gdpr("retention", "run", parse=False))
    print(demo.gdpr("retention", "report", parse=False, ok=(0, 1)))


@dataclass(frozen=True)
class Ending:
    """What the story leaves for the end: Bob's email with a live link, Ada's erasure."""

    bob: Mail
    erased: dict[str, Any]


def story(demo: Demo) -> Ending:
    say("A sample shop and CRM (SQLite)")
    build_sample_app(demo)
    print(
        "shop: 3 users (Ada, Bob, Cy) with orders, payments, invoices, sessions, a newsletter,\n"
        "      loyalty cards and an address that Ada shares with Bob, who she referred\n"
        "crm:  2 customers (Ada, Bob) with a support ticket each"
    )
    print(demo.gdpr("sources", "list", parse=False))
    say(f"What an erasure of {ADA} would do (nothing is changed)")
    print(demo.gdpr("request", "plan", "--email", ADA, parse=False))
    say("Starting a Celery worker on the embedded broker, and the download service")
    demo.start("worker", "worker", "-c", "1", ready="ready.")
    demo.start("serve", "serve", ready="listening on")
    print(f"worker: {demo.folder / 'worker.log'}; download service: {demo.base_url}")
    say("Export (Art. 15): submitted by alice, auto-approved, run by the worker")
    request_id, ada = export(demo, ADA, "DEMO-1")
    show_package(demo, request_id)
    erased = erasure(demo, str(ada.link))
    say("Rows left in the shop")
    print(f"ada (user 1): {shop_rows(demo, 1)}")
    print(f"bob (user 2): {shop_rows(demo, 2)}")
    say("Bob asks for his data too: his export, with a link that works")
    _, bob = export(demo, BOB, "DEMO-4")
    retention(demo)
    say("Audit trail")
    print(demo.gdpr("audit", "verify", parse=False, ok=(0, 1)))
    return Ending(bob, erased)


def next_steps(demo: Demo, ending: Ending, serve_seconds: float) -> None:
    say("What next")
    print(f"Bob's download link, served at {demo.base_url} (log: {demo.folder / 'serve.log'}):")
    print(f"  {ending.bob.link}")
    print("  open it in a browser, press Download: a ZIP whose index.html explains his data")
    print(f"The subjects' emails (the outbox folder stands in for SMTP), {demo.home / 'outbox'}:")
    for mail in read_outbox(demo.home / "outbox"):
        print(f"  {mail.path.name}  to {mail.to}: {mail.subject}")
    print(f"Ada's erasure, in words (`gdpr request show {ending.erased['id']}` has it all):")
    for line in receipt_in_words(ending.erased["receipt"] or {}):
        print(f"  - {line}")
    print(f"Try it yourself (gdpr lives in {BIN}; the folder's gdpr.toml holds the settings):")
    print(f"  cd {demo.folder} && source {BIN / 'activate'}")
    print("  gdpr request list")
    print("  gdpr request export --email cy@example.com --ticket T-1   # needs `gdpr worker`")
    print("  gdpr serve                                                 # the download service")
    linger(serve_seconds)


def linger(seconds: float) -> None:
    """Keep the worker and the download service up for `seconds`; Ctrl-C ends it sooner."""
    if seconds <= 0:
        return
    print(f"\nThe worker and the download service stay up for {seconds:g} s; Ctrl-C stops them.")
    end = time.monotonic() + seconds
    try:
        while (left := end - time.monotonic()) > 0:
            if TTY:
                live(f"stopping in {left:.0f} s")
            time.sleep(min(left, 1.0))
    except KeyboardInterrupt:
        pass
    live_done()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".gdpr-demo", help="demo folder")
    parser.add_argument("--port", type=int, default=8080, help="download service (if free)")
    parser.add_argument(
        "--serve-seconds", type=float, default=60, help="keep serving this long at the end"
    )
    options = parser.parse_args(argv)
    demo = Demo(options.dir.resolve(), pick_port(options.port))
    try:
        ending = story(demo)
        next_steps(demo, ending, options.serve_seconds)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        demo.stop()
    print("Stopped the worker and the download service; everything stays in", demo.folder)


if __name__ == "__main__":
    main()
