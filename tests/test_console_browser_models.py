"""The models and rigs pages in a real Chromium: an operator pins a version through the confirmation dialog and
two server replicas follow; a viewer sees no pin button; the rigs page draws every rig; no JavaScript errors.
Screenshots of both pages go to docs/console/ with WELDSTREAM_REFRESH_SCREENSHOTS=1."""

from __future__ import annotations

import asyncio
import time

from tests.browser import Browser, chromium, needs_chromium, until
from tests.console_stack import PASSWORD, add_account, console_config, running_console, with_server
from weldstream.console import rig_watch
from weldstream.registry import Round, open_registry
from weldstream.weight_store import WeightStore

from .conftest import server_config
from .test_console_models import FOLLOW_S, hearing_replicas, publish, segment, serving
from .test_learner_stream import wait_for


async def logged_in(browser: Browser, url: str, name: str, page_name: str):
    """A page logged in as ``name`` that lands on ``page_name``."""
    page = await browser.page(url)
    await page.goto(f"/login?next=/{page_name}")
    await page.fill("#name", name)
    await page.fill("#password", PASSWORD)
    async with page.expect_navigation(url=f"**/{page_name}"):
        await page.click("#submit")
    return page


@needs_chromium
async def test_an_operator_pins_through_the_dialog_and_both_replicas_follow(broker, tmp_path, started,
                                                                           screenshots):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    for _ in range(7):
        publish(store)
    registry = open_registry("", model_dir)
    for version, reason in ((5, "ut-steel-x70 mIoU fell 0.062 (p=0.98)"), (7, "xray-film-steel-x52 mIoU fell 0.041")):
        registry.record_round(Round("learner", "replay-gem", time.time() - 600 + version, 41.0, scans=64, steps=128,
                                    compared_with=version, outcome="refused", reason=reason))
    registry.close()
    replicas = await hearing_replicas(started, broker, model_dir)  # they serve version 8
    cfg = console_config(tmp_path, broker.bootstrap, model_dir=model_dir)
    add_account(cfg, "ops", "operator")
    add_account(cfg, "vic", "viewer")
    async with running_console(cfg) as url, chromium() as browser:
        page = await logged_in(browser, url, "ops", "models")
        await page.wait_for_selector("#versions button[data-pin='6']")
        assert await page.locator("#chart polyline").count() == 3  # a line per domain
        await page.click("#versions button[data-pin='6']")
        assert await page.locator("#confirm").is_visible()
        await page.fill("#confirm-reason", "audit of version 8")
        await page.click("#confirm-ok")
        await page.wait_for_selector("#message.ok")
        await wait_for(lambda: serving(replicas, 6), FOLLOW_S, "both replicas to follow the pin made in the page")
        await until(page,
            "document.querySelectorAll('#replicas tbody tr').length === 2 && "
            "[...document.querySelectorAll('#replicas tbody tr')].every(r => r.children[1].textContent === 'v6')",
            timeout=15000)
        assert "pinned" in await page.locator("#pin-state").text_content()
        await page.screenshot(path=str(screenshots / "models.png"))

        viewer = await logged_in(browser, url, "vic", "models")
        await viewer.wait_for_selector("#versions tbody tr[data-version='6']")
        assert await viewer.locator("button[data-pin]").count() == 0
        assert not await viewer.locator("#unpin").is_visible()
        assert not await viewer.locator("#consolidation").is_visible()
    assert browser.errors == []
    registry = open_registry("", model_dir)
    try:
        assert [(a.action, a.version, a.actor, a.reason) for a in registry.actions()] == [
            ("pin", 6, "console:ops", "audit of version 8")]
    finally:
        registry.close()


@needs_chromium
async def test_the_rigs_page_shows_every_rig_with_its_lines(tmp_path, started, monkeypatch, screenshots):
    monkeypatch.setattr(rig_watch, "INTERVAL_S", 0.3)
    server = await started(server_config(tmp_path / "models"))
    cfg = with_server(console_config(tmp_path, None), f"127.0.0.1:{server.port}",
                      server_metrics=f"http://127.0.0.1:{server.metrics_port}/metrics")
    add_account(cfg, "vic", "viewer")
    rigs = ["line-3-ut", "spool-yard-xray", "field-joint-7"]
    async with running_console(cfg) as url, chromium() as browser:
        for seed in range(3):  # a few readings apart, so each rig has a line, not a dot
            await segment(server.port, rigs[:seed + 1] * (seed + 1), seed=seed)
            await asyncio.sleep(0.8)
        page = await logged_in(browser, url, "vic", "rigs")
        await until(page, "document.querySelectorAll('#rigs tbody tr[data-rig]').length === 3",
                                     timeout=15000)
        assert sorted(await page.locator("#rigs tbody tr[data-rig]").evaluate_all(
            "rows => rows.map(r => r.dataset.rig)")) == sorted(rigs)
        assert await page.locator("#rigs svg[data-kind='doubt'] polyline").count() >= 1
        assert "up" in await page.locator("#server").text_content()
        await page.screenshot(path=str(screenshots / "rigs.png"))
    assert browser.errors == []
