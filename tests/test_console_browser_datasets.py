"""The datasets and try-a-scan pages in a real Chromium: an operator uploads a zip with broken pairs and sees each
skipped pair with its reason and the job finish (the good pairs on Kafka); a viewer is told datasets are for
operators; a scan dropped on the try page shows the live model's version and mask; no JavaScript errors.
Screenshots of both pages go to docs/console/ with WELDSTREAM_REFRESH_SCREENSHOTS=1."""

from __future__ import annotations

from tests.browser import chromium, needs_chromium
from tests.console_stack import PASSWORD, add_account, console_config, read_labeled, running_console, with_server
from tests.upload_files import broken_dataset, zip_folder
from weldstream.simulator.dataset import write_dataset


async def on_page(browser, url: str, name: str, page_name: str):
    page = await browser.logged_in(url, name, PASSWORD)
    await page.goto(f"/{page_name}")
    await page.wait_for_selector("header.bar")
    return page


@needs_chromium
async def test_an_operator_uploads_a_zip_and_sees_each_skipped_pair_with_its_reason(broker, tmp_path,
                                                                                   screenshots):
    good, broken = broken_dataset(tmp_path / "scans")
    archive = zip_folder(tmp_path / "weld-scans-2024-06.zip", tmp_path / "scans")
    cfg = console_config(tmp_path, broker.bootstrap)
    add_account(cfg, "olga", "operator")
    add_account(cfg, "vic", "viewer")
    async with running_console(cfg) as url, chromium() as browser:
        page = await on_page(browser, url, "olga", "datasets")
        await page.wait_for_selector("#binary option[value='4']", state="attached")
        await page.fill("#rate", "0")
        await page.fill("#rig", "bench-3")
        await page.set_input_files("#file", str(archive))
        await page.click("#upload")
        await page.wait_for_selector("#message.ok")
        await page.wait_for_selector("#job-state.done", timeout=60_000)
        await page.wait_for_selector("#jobs .state.done")
        cells = await page.locator("#skipped tbody tr").evaluate_all(
            "rows => rows.map(r => [...r.children].map(c => c.textContent))")
        reasons = dict(cells)
        assert set(reasons) == set(broken), reasons
        assert all(reasons[path].startswith(start) for path, start in broken.items()), reasons
        row = await page.locator("#jobs tbody tr").first.evaluate("r => [...r.children].map(c => c.textContent)")
        assert row[1] == archive.name and row[3] == "done" and row[5:7] == [str(len(good)), str(len(broken))], row
        await page.screenshot(path=str(screenshots / "datasets.png"), full_page=True)

        viewer = await on_page(browser, url, "vic", "datasets")
        await viewer.wait_for_selector("#not-allowed:not(.hidden)")
        assert not await viewer.locator("#upload-form").is_visible()
    assert browser.errors == []
    assert sorted(m.scan_id for m in await read_labeled(broker.bootstrap, len(good))) == sorted(good)


@needs_chromium
async def test_a_scan_tried_in_the_page_shows_the_version_and_its_mask(tmp_path, server, screenshots):
    write_dataset(tmp_path / "try", "xray-film-steel-x52", 1, seed=4, size=(256, 384))
    scan = next((tmp_path / "try" / "images").iterdir())
    cfg = with_server(console_config(tmp_path, None), f"127.0.0.1:{server.port}")
    add_account(cfg, "vic", "viewer")
    async with running_console(cfg) as url, chromium() as browser:
        page = await on_page(browser, url, "vic", "try")
        await page.set_input_files("#file", str(scan))
        await page.wait_for_selector("#result:not(.hidden)")
        await page.wait_for_selector("#message.ok")
        assert await page.locator("#version").text_content() == "v0"
        assert await page.locator("#size").text_content() == "384 × 256 px"
        assert await page.locator("#classes input[type=checkbox]").count() == 4
        drawn = await page.locator("#view").evaluate("c => [c.width, c.height]")
        assert drawn == [384, 256]
        await page.fill("#opacity", "70")
        assert await page.locator("#opacity-value").text_content() == "70%"
        if not await page.locator("#regions tbody td.muted").count():  # outline the largest region
            await page.locator("#regions tbody tr").first.click()
        await page.screenshot(path=str(screenshots / "try.png"))

        refused = tmp_path / "notes.txt"
        refused.write_text("not a scan")
        await page.set_input_files("#file", str(refused))
        await page.wait_for_selector("#message.error")
        assert "is not a PNG, TIFF or DICONDE/DICOM file" in await page.locator("#message").text_content()
    assert browser.errors == []
