"""The chat in a real browser (Debian's Chromium driven by Playwright): a message typed in one tab shows in another.

Playwright never downloads a browser here: it drives the system's ``/usr/bin/chromium``. A screenshot of the
receiving tab is kept as a build artifact (``$CHANNELS_VALKEY_ARTIFACTS``, else ``build/artifacts/``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Milliseconds, as Playwright counts: generous, so only a message that never arrives fails the test.
TIMEOUT_MS = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    configured = os.environ.get("CHANNELS_VALKEY_ARTIFACTS")
    directory = Path(configured) if configured else REPO / "build" / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def chromium() -> Path:
    """The system's Chromium; its absence fails the test (CI installs it), it never skips it."""
    if not CHROMIUM.is_file():
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_tab(browser: Browser) -> Page:
    """A page in a context of its own, as a second visitor would have."""
    context = await browser.new_context(viewport={"width": 900, "height": 640})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


async def wait_connected(page: Page, layer: str) -> None:
    await expect(page.locator("#status")).to_contain_text("connected to worker", timeout=TIMEOUT_MS)
    await expect(page.locator("#status")).to_contain_text(f"{layer} layer", timeout=TIMEOUT_MS)
    await expect(page.locator("#send")).to_be_enabled(timeout=TIMEOUT_MS)


async def send(page: Page, author: str, text: str) -> None:
    await page.fill("#author", author)
    await page.fill("#message", text)
    await page.click("#send")


async def test_a_message_typed_in_one_tab_appears_in_the_other(browser: Browser, demo: Any) -> None:
    room = f"tea-{uuid.uuid4().hex[:6]}"
    sender = await open_tab(browser)
    receiver = await open_tab(browser)

    # The first visitor picks the room with the form; the second follows a link to it.
    await sender.goto(demo.url)
    await sender.fill("#room", room)
    await sender.click("#picker button[type=submit]")
    await expect(sender).to_have_url(f"{demo.url}room/{room}/", timeout=TIMEOUT_MS)
    await receiver.goto(f"{demo.url}room/{room}/")
    await expect(receiver.locator("h1")).to_have_text(f"#{room}")
    await wait_connected(sender, demo.layer)
    await wait_connected(receiver, demo.layer)

    await send(sender, "ada", "Does the layer carry this across workers?")
    arrived = receiver.locator("#log .message").filter(has_text="Does the layer carry this across workers?")
    await expect(arrived).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(arrived.locator(".author")).to_have_text("ada")
    await expect(sender.locator("#log .message")).to_have_count(1, timeout=TIMEOUT_MS)
    assert await sender.locator("#message").input_value() == ""

    await send(receiver, "grace", "It does: <b>this</b> stays text.")
    await expect(sender.locator("#log .message").filter(has_text="<b>this</b> stays text")).to_have_count(
        1, timeout=TIMEOUT_MS
    )
    await expect(receiver.locator("#log .message")).to_have_count(2, timeout=TIMEOUT_MS)
    assert await receiver.locator("#log b").count() == 0

    screenshot = artifacts_dir() / f"demo-chat-{demo.layer}.png"
    await receiver.screenshot(path=str(screenshot), full_page=True)
    data = screenshot.read_bytes()
    assert len(data) > len(PNG_SIGNATURE)
    assert data.startswith(PNG_SIGNATURE)


async def test_a_bad_room_name_is_explained_on_the_page(browser: Browser, demo: Any) -> None:
    page = await open_tab(browser)
    await page.goto(demo.url)
    await page.fill("#room", "no spaces")
    await page.click("#picker button[type=submit]")
    await expect(page.locator("#error")).to_contain_text("invalid room name 'no spaces'", timeout=TIMEOUT_MS)
    await expect(page.locator("#room")).to_have_value("no spaces")
