"""A real headless Chromium (Debian's package) driven by Playwright, for the console's browser tests.

Playwright's own browser download cannot work offline, so it launches /usr/bin/chromium; tests skip with
the reason where that package is not installed (`.ci/run` installs it). Every page records its
JavaScript errors and console errors, which a test asserts to be none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("WELDSTREAM_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SCREEN = {"width": 1920, "height": 1080}
TABLET = {"width": 1024, "height": 1366}

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} "
                                    "(Debian: apt-get install chromium chromium-driver)")


@dataclass
class Browser:
    browser: object
    errors: list[str] = field(default_factory=list)  # JavaScript exceptions and console.error calls
    refused: list[str] = field(default_factory=list)  # responses >= 400 (some are expected: a 409 claim)

    async def page(self, base_url: str, viewport: dict | None = None):
        """A fresh page (its own cookies) whose JavaScript and console errors land in ``errors``."""
        context = await self.browser.new_context(base_url=base_url, viewport=viewport or SCREEN)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("response", lambda r: self.refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        return page

    def _console(self, message) -> None:
        # Chromium also logs each HTTP error response as a console error; those are in ``refused``.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console.error: {message.text}")

    async def logged_in(self, base_url: str, name: str, password: str, viewport: dict | None = None):
        page = await self.page(base_url, viewport)
        await page.goto("/login")
        await page.fill("#name", name)
        await page.fill("#password", password)
        async with page.expect_navigation():
            await page.click("#submit")
        return page


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        try:
            yield Browser(browser)
        finally:
            await browser.close()


async def until(page, expression: str, arg: object = None, timeout: float = 30_000, every_s: float = 0.1) -> object:
    """Like ``page.wait_for_function``, which Playwright re-evaluates from a string and so cannot run on a
    page whose Content-Security-Policy forbids eval (the console's): polls ``page.evaluate`` instead."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout / 1000
    while True:
        value = await page.evaluate(expression, arg)
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"{expression!r} did not hold within {timeout / 1000:.0f} s")
        await asyncio.sleep(every_s)
