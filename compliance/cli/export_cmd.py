"""`gdpr export ...`: operator tools for encrypted export packages."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import click

from compliance.cli import output
from compliance.cli.context import current
from compliance.errors import ValidationError
from exporters.crypto import decrypt_stream, read_header, wrapper_for

CHUNK = 1024 * 1024


@click.group()
def export() -> None:
    """Encrypted export packages."""


@export.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the ZIP ('-' for stdout). Default: FILE without .enc.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def decrypt(file: Path, out: Path | None, force: bool, as_json: bool) -> None:
    """Decrypt and verify FILE (an encrypted package) into a ZIP.

    Uses the keyring from GDPR_KEYS (or KMS for KMS-wrapped packages). With -o OUT,
    nothing is written unless the whole file authenticates. With -o -, each segment goes
    to stdout once it authenticates: a file that fails later leaves partial output and
    exit code 7, so discard the output on a non-zero exit.
    """
    app = current()
    wrapper = wrapper_for(app.settings(), app.keyring())
    key_id = read_header(_read(file)).key_id
    if out is not None and str(out) == "-":
        for piece in decrypt_stream(_read(file), wrapper):
            sys.stdout.buffer.write(piece)
        return
    target = out or _default_output(file)
    if target.exists() and not force:
        raise ValidationError(f"{target} already exists; choose another -o or pass --force")
    written = _write_atomically(target, decrypt_stream(_read(file), wrapper))
    if as_json:
        output.emit_json({"output": str(target), "bytes": written, "key_id": key_id})
    else:
        click.echo(f"decrypted {file.name} -> {target} ({written} bytes, key {key_id})")


def _read(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _default_output(file: Path) -> Path:
    return file.with_suffix("") if file.suffix == ".enc" else file.with_name(file.name + ".zip")


def _write_atomically(target: Path, pieces: Iterator[bytes]) -> int:
    """Write to a private temp file beside `target`; it replaces `target` only if complete."""
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    written = 0
    try:
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            for piece in pieces:
                written += handle.write(piece)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return written
