"""A real local SMTP server for tests and demos: every message becomes a .eml file.

python ops/smtp_sink.py --host 127.0.0.1 --port 8025 --maildir /tmp/gdpr-smtp
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        name = f"{time.time_ns()}-{uuid.uuid4().hex}.eml"
        staging = self.maildir / f".{name}.tmp"
        staging.write_bytes(envelope.original_content or envelope.content)
        os.replace(staging, self.maildir / name)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--maildir", default="/tmp/gdpr-smtp")
    args = parser.parse_args()
    maildir = Path(args.maildir)
    maildir.mkdir(parents=True, exist_ok=True)
    controller = Controller(
        MaildirHandler(maildir), hostname=args.host, port=args.port, enable_SMTPUTF8=True
    )
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
