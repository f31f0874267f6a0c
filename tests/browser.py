"""Headless Chromium for page tests, driven through WebDriver (Debian's chromium and
chromium-driver; selenium from PyPI), at a phone's viewport with touch.

Selenium blocks: tests whose server runs on their own event loop call it through
``asyncio.to_thread`` so the loop keeps serving the pages the browser asks for.
Screenshots go to ``test-artifacts/`` (``HUREN_TEST_ARTIFACTS``), kept after the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: A mid-sized phone (CSS pixels), as Chrome's device toolbar has it.
PHONE = {"width": 390, "height": 844, "pixelRatio": 2.0, "touch": True}
PHONE_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/150.0 Mobile Safari/537.36"
)


def artifacts_dir(name: str) -> Path:
    base = Path(os.environ.get("HUREN_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture
def phone() -> Iterator[object]:
    """A headless Chromium WebDriver emulating a phone; skipped (failed in CI) without it."""
    browser = _chrome(mobile=True)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def laptop() -> Iterator[object]:
    """A headless Chromium WebDriver with a laptop's screen (1366x768)."""
    browser = _chrome(mobile=False)
    try:
        yield browser
    finally:
        browser.quit()


def _chrome(*, mobile: bool) -> Any:
    found = _binaries()
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("chromium and chromium-driver are needed (scripts/test installs them)")
        pytest.skip("chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--lang=zh-CN")
    if mobile:
        options.add_experimental_option(
            "mobileEmulation", {"deviceMetrics": PHONE, "userAgent": PHONE_UA}
        )
    else:
        options.add_argument("--window-size=1366,768")
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    browser.set_page_load_timeout(60)
    return browser
