"""Headless Chromium (Debian's package, installed by `make test`) driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from focalserve_client import Client
from focalserve_devtools.demo_collection import load_demo_collection
from focalserve_devtools.launch import running_gateway

# Chromium's own calls home are refused by a closed network, many at a time: keep them off.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"


def chromium_path() -> str:
    path = os.environ.get("FOCALSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail("Chromium is missing: `make test` installs Debian's chromium package first")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped on purpose: Playwright's sync API runs an event loop while it is open, and
    every asyncio test after it would find that loop running."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


@pytest.fixture(scope="module")
def demo_gateway(demo_repository, tmp_path_factory) -> Iterator[str]:
    """The `make serve` setup on a small demo collection: ColorShape images, colour and shape conditions."""
    logs = tmp_path_factory.mktemp("browser-logs")
    data = tmp_path_factory.mktemp("browser-data")
    with running_gateway(demo_repository, logs / "gateway.log", data_dir=str(data)) as url:
        with Client(url) as client:
            load_demo_collection(client, count=150)
        yield url


@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
