"""Headless Chromium (Debian's package) driven by Playwright, for UI checks."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from dev.harness.waits import scaled

# As root in a closed network: no sandbox, and none of Chromium's calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed: run dev/ensure-chromium (make test does)"
    return path


@contextmanager
def browser_page() -> Iterator[Page]:
    """A page whose waits and actions time out after 60 s (scaled, dev/harness/waits.py), and which
    skips Dagster's community dialog whenever it would block a click, however late it
    appears (a busy machine can show it long after the page)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.set_default_timeout(scaled(60) * 1000)
            skip = page.get_by_role("button", name="Skip")
            page.add_locator_handler(skip, lambda button: button.first.click())
            yield page
        finally:
            browser.close()


def dismiss_dialogs(page: Page) -> None:
    """Dagster greets a new instance with a community dialog; skip it before a screenshot
    (the page's locator handler only runs before actions)."""
    skip = page.get_by_role("button", name="Skip")
    try:
        # It appears a moment after the page: wait for it briefly, once per page load.
        skip.first.wait_for(timeout=3_000)
    except PlaywrightTimeoutError:
        return
    # The page's locator handler may click it first (this click is an action too): then
    # the button is gone before this click lands, which is what we want anyway.
    with contextlib.suppress(PlaywrightTimeoutError):
        skip.first.click(timeout=5_000)
    skip.first.wait_for(state="hidden")
