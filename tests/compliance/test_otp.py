"""Step-up with one-time codes: enrollment, fresh codes only, lockout after five wrong ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select

from compliance import otp
from compliance.config import Settings
from compliance.db import Database, utcnow
from compliance.errors import PermissionDeniedError, ValidationError
from compliance.keyring import load_keyring
from compliance.models import AuditEvent, OperatorOtp
from compliance.operators import Operator
from tests.compliance.helpers import write_small_manifest

GDPR = str(Path(sys.executable).with_name("gdpr"))
ALICE = Operator("alice")


def actions(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def enrolled(db: Database, settings: Settings) -> pyotp.TOTP:
    enrollment = otp.begin("alice")
    totp = pyotp.TOTP(enrollment.secret)
    otp.confirm(db, load_keyring(settings), ALICE, enrollment, totp.now(), utcnow())
    return totp


def test_a_wrong_confirmation_code_stores_nothing(db: Database, settings: Settings) -> None:
    enrollment = otp.begin("alice")
    wrong = f"{(int(pyotp.TOTP(enrollment.secret).now()) + 1) % 1_000_000:06d}"
    with pytest.raises(ValidationError, match="does not match the new secret"):
        otp.confirm(db, load_keyring(settings), ALICE, enrollment, wrong, utcnow())
    with db.session() as session:
        assert session.get(OperatorOtp, "alice") is None


def test_an_operator_who_never_enrolled_needs_no_code(db: Database, settings: Settings) -> None:
    otp.step_up(db, load_keyring(settings), ALICE, None, "approve erasures", utcnow())


def test_a_fresh_code_passes_once_and_never_again(db: Database, settings: Settings) -> None:
    keyring = load_keyring(settings)
    totp = enrolled(db, settings)
    later = utcnow() + timedelta(seconds=30)
    code = totp.at(later)
    with pytest.raises(PermissionDeniedError, match="add --otp CODE"):
        otp.step_up(db, keyring, ALICE, None, "approve erasures", later)
    otp.step_up(db, keyring, ALICE, code, "approve erasures", later)
    with pytest.raises(PermissionDeniedError, match="wrong or already used"):
        otp.step_up(db, keyring, ALICE, code, "approve erasures", later)
    assert actions(db)[-1] == otp.FAILED


def test_five_wrong_codes_in_fifteen_minutes_lock_the_operator_out(
    db: Database, settings: Settings
) -> None:
    keyring = load_keyring(settings)
    totp = enrolled(db, settings)
    start = utcnow() + timedelta(minutes=1)
    for minute in range(5):
        with pytest.raises(PermissionDeniedError, match=f"{minute + 1} of 5"):
            otp.step_up(
                db, keyring, ALICE, "000000", "rotate keys", start + timedelta(minutes=minute)
            )
    at = start + timedelta(minutes=5)
    with pytest.raises(PermissionDeniedError, match="locked out of rotate keys until"):
        otp.step_up(db, keyring, ALICE, totp.at(at), "rotate keys", at)
    assert actions(db).count(otp.FAILED) == 5 and actions(db).count(otp.LOCKED) == 1
    after = start + timedelta(minutes=20)  # the lockout (15 minutes from the fifth) is over
    otp.step_up(db, keyring, ALICE, totp.at(after), "rotate keys", after)


def test_wrong_codes_spread_over_more_than_fifteen_minutes_do_not_lock(
    db: Database, settings: Settings
) -> None:
    keyring = load_keyring(settings)
    totp = enrolled(db, settings)
    start = utcnow() + timedelta(minutes=1)
    for minute in (0, 4, 8, 12, 17, 21):  # never five within one window
        with pytest.raises(PermissionDeniedError, match="wrong or already used"):
            otp.step_up(
                db, keyring, ALICE, "000000", "rotate keys", start + timedelta(minutes=minute)
            )
    at = start + timedelta(minutes=22)
    otp.step_up(db, keyring, ALICE, totp.at(at), "rotate keys", at)
    assert otp.LOCKED not in actions(db)


def test_a_malformed_code_is_a_one_line_error_and_counts_nothing(
    db: Database, settings: Settings
) -> None:
    enrolled(db, settings)
    with pytest.raises(ValidationError, match="6 digits"):
        otp.step_up(db, load_keyring(settings), ALICE, "12ab56", "rotate keys", utcnow())
    assert otp.FAILED not in actions(db)


def test_unenroll_forgets_the_code_and_ends_a_lockout(db: Database, settings: Settings) -> None:
    keyring = load_keyring(settings)
    enrolled(db, settings)
    now = utcnow()
    for _ in range(5):
        with pytest.raises(PermissionDeniedError):
            otp.step_up(db, keyring, ALICE, "000000", "rotate keys", now)
    otp.unenroll(db, Operator("carol"), "alice", now)
    otp.step_up(db, keyring, ALICE, None, "rotate keys", now)  # no longer enrolled
    assert actions(db)[-1] == otp.REMOVED


# --- through the CLI, in a terminal-like exchange ----------------------------------------------


def gdpr_env(tmp_path: Path, operator: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDPR_")}
    manifest = write_small_manifest(tmp_path / "sources")
    return env | {
        "GDPR_HOME": str(tmp_path / ".gdpr"),
        "GDPR_SOURCES": str(manifest),
        "GDPR_OPERATOR": operator,
    }


def gdpr(tmp_path: Path, operator: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GDPR, *args],
        cwd=tmp_path,
        env=gdpr_env(tmp_path, operator),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_an_enrolled_approver_approves_only_with_a_fresh_code(tmp_path: Path) -> None:
    enroll = subprocess.Popen(
        [GDPR, "operator", "enroll"],
        cwd=tmp_path,
        env=gdpr_env(tmp_path, "bob"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert enroll.stdout is not None and enroll.stdin is not None
    shown = ""
    while "secret (to type in" not in shown:
        shown += enroll.stdout.readline()
    assert "otpauth://totp/gdpr:bob?secret=" in shown and "█" in shown
    secret = re.search(r"secret \(to type in instead of scanning\): ([A-Z2-7]+)", shown)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    out, err = enroll.communicate(totp.now() + "\n", timeout=60)
    assert enroll.returncode == 0, err
    assert "bob: enrolled" in out

    created = gdpr(tmp_path, "alice", "request", "erase", "--email", "ada@example.com", "--json")
    erasure = json.loads(created.stdout)["id"]
    without = gdpr(tmp_path, "bob", "request", "approve", erasure)
    assert without.returncode == 4 and "add --otp CODE" in without.stderr
    wrong = gdpr(tmp_path, "bob", "request", "approve", erasure, "--otp", "000000")
    assert wrong.returncode == 4 and "1 of 5" in wrong.stderr
    # the enrollment used this step's code: the next step's is the fresh one
    fresh = totp.at(utcnow() + timedelta(seconds=30))
    approved = gdpr(tmp_path, "bob", "request", "approve", erasure, "--otp", fresh, "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["status"] == "queued"
    log = gdpr(tmp_path, "bob", "request", "show", erasure)
    assert secret.group(1) not in log.stdout + log.stderr
