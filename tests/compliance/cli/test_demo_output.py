"""What the quick-start demo prints (ops/demo_output.py): its progress line, the
subject's emails read back from the outbox folder, and the receipt in words, whose
counts are the sums of the places it lists."""

from __future__ import annotations

import os
import re
import time
from email.message import EmailMessage
from pathlib import Path

from ops.demo_output import fit, mails_to, progress_line, read_outbox, receipt_in_words

RECEIPT = {
    "kind": "erasure",
    "dry_run": False,
    "verified": True,
    "exports": {"links_revoked": 1, "packages_deleted": 1},
    "sources": [
        {
            "source": "shop",
            "locations": [
                {"location": "orders", "disposition": "delete", "deleted": 2, "scope": "subject"},
                {"location": "users", "disposition": "delete", "deleted": 1, "scope": "subject"},
                {
                    "location": "invoices",
                    "disposition": "retain",
                    "retained": 1,
                    "scope": "subject",
                    "legal_basis": "Art. 6(1)(c) GDPR: commercial law",
                },
                {
                    "location": "addresses",
                    "disposition": "retain",
                    "retained": 1,
                    "scope": "shared",
                },
                {
                    "location": "invoices.user_id",
                    "disposition": "detach",
                    "detached": 1,
                    "scope": "reference",
                },
            ],
        },
        {
            "source": "crm",
            "locations": [
                {"location": "tickets", "disposition": "delete", "deleted": 3, "scope": "subject"},
            ],
        },
    ],
}


def test_the_receipt_in_words_counts_each_outcome_as_the_sum_of_the_places_it_names() -> None:
    lines = receipt_in_words(RECEIPT)
    assert lines[0] == "erased: 6 (shop.orders 2; shop.users 1; crm.tickets 3)"
    assert (
        "kept as they are: 1 (shop.invoices 1, because of Art. 6(1)(c) GDPR: commercial law)"
        in (lines)
    )
    assert "kept because other people share them: 1 (shop.addresses 1)" in lines
    assert "kept records unlinked from erased ones: 1 (shop.invoices.user_id 1)" in lines
    assert lines[-2:] == [
        "earlier exports: 1 download link(s) revoked, 1 package(s) deleted",
        "checked afterwards: nothing of the subject's is left",
    ]
    for line in lines:
        said = re.fullmatch(r"[^:]+: (\d+) \((.*)\)", line)
        if said:
            parts = [int(re.search(r" (\d+)", p).group(1)) for p in said.group(2).split("; ")]  # type: ignore[union-attr]
            assert int(said.group(1)) == sum(parts), line


def test_a_dry_run_receipt_says_nothing_was_changed() -> None:
    assert receipt_in_words({**RECEIPT, "dry_run": True})[-1] == "a dry run: nothing was changed"
    assert receipt_in_words({"sources": []}) == ["nothing of the subject's was found"]


def test_the_progress_line_names_each_step_with_its_counts_and_what_holds_the_request_up() -> None:
    view = {
        "id": "1a2b3c4d-0000-4000-8000-000000000000",
        "kind": "export",
        "status": "queued",
        "steps": [
            {"source": "*", "action": "discover", "status": "done", "counts": {"discovered": 2}},
            {"source": "shop", "action": "export", "status": "running", "counts": {"rows": 12}},
        ],
        "trouble": "retrying: source crm unreachable (attempt 4, next in 80 s)",
    }
    assert progress_line(view) == (
        "export 1a2b3c4d queued: discover done (discovered=2) · shop export running (rows=12)"
        " (retrying: source crm unreachable (attempt 4, next in 80 s))"
    )
    assert fit("a" * 10, 6) == "aaaaa…" and fit("short", 80) == "short"


def test_the_outbox_is_read_oldest_first_with_each_message_s_download_link(
    tmp_path: Path,
) -> None:
    for age, name, to, body in (
        (20, "b.eml", "ada@example.com", "Download: http://127.0.0.1:8080/d/AbC-12_x now."),
        (10, "a.eml", "bob@example.com", "Your data has been erased."),
    ):
        message = EmailMessage()
        message["To"], message["Subject"] = to, f"for {to}"
        message.set_content(body)
        path = tmp_path / name
        path.write_bytes(message.as_bytes())
        os.utime(path, (time.time() - age, time.time() - age))
    mails = read_outbox(tmp_path)
    assert [m.to for m in mails] == ["ada@example.com", "bob@example.com"]
    assert mails[0].link == "http://127.0.0.1:8080/d/AbC-12_x"
    assert mails[1].link is None
    assert mails_to(mails, "BOB@example.com") == [mails[1]]


def test_a_legal_basis_explains_what_is_kept_never_what_was_erased() -> None:
    basis = "Art. 6(1)(b) GDPR: performance of a contract"
    receipt = {
        "sources": [
            {
                "source": "shop",
                "locations": [
                    {
                        "location": "users",
                        "disposition": "delete",
                        "deleted": 1,
                        "legal_basis": basis,
                    },
                    {
                        "location": "invoices",
                        "disposition": "retain",
                        "retained": 1,
                        "legal_basis": "Art. 6(1)(c) GDPR: commercial law",
                    },
                ],
            }
        ]
    }
    erased, kept, *_ = receipt_in_words(receipt)
    assert erased == "erased: 1 (shop.users 1)"
    assert (
        kept
        == "kept as they are: 1 (shop.invoices 1, because of Art. 6(1)(c) GDPR: commercial law)"
    )
