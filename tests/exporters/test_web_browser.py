"""The download page in a real headless browser (Debian's chromium, driven by playwright).

Needs /usr/bin/chromium (`apt-get install -y chromium`). Without it the test skips on a
developer machine and fails when CI is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DownloadSite

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing; `.venv/bin/pip install playwright`")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


def test_clicking_download_in_a_browser_saves_the_zip_its_manifest_describes(
    download_site: DownloadSite, browser: Any, tmp_path: Path
) -> None:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    response = page.goto(download_site.url)
    assert response is not None and response.status == 200
    assert page.title() == "Your personal data export"
    assert page.locator("h1").inner_text() == "Your personal data export"
    button = page.locator("#download")
    assert button.is_visible()
    # The stylesheet loaded under the CSP: the button is styled, nothing was blocked.
    assert button.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(31, 95, 191)"
    assert not [line for line in console if "Content Security Policy" in line]

    with page.expect_download() as info:
        button.click()
    download = info.value
    assert re.fullmatch(r"personal-data-export-\d{4}-\d{2}-\d{2}\.zip", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    context.close()

    with zipfile.ZipFile(saved) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        listed = {entry["path"]: entry for entry in manifest["files"]}
        assert set(listed) == set(archive.namelist()) - {"manifest.json"}
        for path, entry in listed.items():
            data = archive.read(path)
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert len(data) == entry["size"]
    assert saved.read_bytes() == download_site.zip_bytes


def test_an_unknown_link_shows_the_not_valid_page_in_a_browser(
    download_site: DownloadSite, browser: Any
) -> None:
    page = browser.new_page()
    page.goto(download_site.url.rsplit("/", 1)[0] + "/" + "B" * 43)
    assert page.locator("h1").inner_text() == "Link not valid"
    assert page.locator("#download").count() == 0
