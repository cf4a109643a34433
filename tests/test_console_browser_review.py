"""The review station in a real Chromium against a real console and broker: an inspector paints, erases, fills,
undoes and submits, and Kafka gets exactly the painted pixels (discs of the brush radius along the stroke, no
anti-aliasing); another inspector is never offered the claimed scan; a viewer sees it but may change nothing; a
portrait tablet paints with touch. No flow leaves a JavaScript error."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from tests.browser import SCREEN, TABLET, chromium, needs_chromium, until
from tests.console_stack import (
    PASSWORD,
    add_account,
    class_png,
    client,
    console_config,
    produce_reviews,
    read_labeled,
    review_scan,
    running_console,
    wait_for_queue,
)
from weldstream.codec import tensor_to_array

pytestmark = needs_chromium
SIZE = (96, 128)
CRACK, POROSITY, INCLUSION = 1, 2, 4


def line(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """Bresenham, both ends included: the pixels the page joins two pointer samples with."""
    dx, dy, sx, sy = abs(x1 - x0), -abs(y1 - y0), 1 if x0 < x1 else -1, 1 if y0 < y1 else -1
    err, out = dx + dy, []
    while True:
        out.append((x0, y0))
        if (x0, y0) == (x1, y1):
            return out
        e2 = 2 * err
        if e2 >= dy:
            err, x0 = err + dy, x0 + sx
        if e2 <= dx:
            err, y0 = err + dx, y0 + sy


def stroke(mask: np.ndarray, points: list[tuple[int, int]], radius: int, value: int) -> None:
    """What a stroke through ``points`` must set: a disc (dx² + dy² <= r²) at every pixel of the polyline."""
    ys, xs = np.mgrid[: mask.shape[0], : mask.shape[1]]
    for (x0, y0), (x1, y1) in list(zip(points[:-1], points[1:], strict=True)) or [(points[0], points[0])]:
        for x, y in line(x0, y0, x1, y1):
            mask[(xs - x) ** 2 + (ys - y) ** 2 <= radius * radius] = value


def flood(mask: np.ndarray, x: int, y: int, value: int) -> None:
    """The connected area (4-neighbours) of the class at (x, y) becomes ``value``."""
    start = mask[y, x]
    todo = deque([(x, y)])
    while todo:
        x, y = todo.popleft()
        if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] == start:
            mask[y, x] = value
            todo.extend([(x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)])


async def at(page, x: int, y: int) -> tuple[float, float]:
    point = await page.evaluate("([x, y]) => reviewStation.clientPoint(x, y)", [x, y])
    return point["x"], point["y"]


async def drag(page, points: list[tuple[int, int]]) -> None:
    """A mouse stroke through the centres of these scan pixels, one pointer event a point."""
    await page.mouse.move(*await at(page, *points[0]))
    await page.mouse.down()
    for point in points[1:]:
        await page.mouse.move(*await at(page, *point))
    await page.mouse.up()


async def state(page) -> dict:
    return await page.evaluate("reviewStation.state()")


async def page_labels(page) -> np.ndarray:
    return np.array(await page.evaluate("reviewStation.labels()"), np.uint8).reshape(SIZE)


async def queue_ids(page) -> list[str]:
    return await page.eval_on_selector_all(".queue-item", "els => els.map((e) => e.dataset.scanId)")


async def opened(page, scan_id: str) -> None:
    await until(page, "(id) => reviewStation.state().scanId === id", arg=scan_id, timeout=20_000)


@pytest.fixture
def station(tmp_path, broker):
    cfg = console_config(tmp_path, broker.bootstrap)
    return cfg, {name: add_account(cfg, name, role) for name, role in
                 (("ann", "inspector"), ("ben", "inspector"), ("vic", "viewer"))}


async def test_an_inspector_paints_erases_fills_and_submits_exactly_those_pixels(station, broker, screenshots):
    cfg, tokens = station
    await produce_reviews(broker.bootstrap, [
        review_scan("s-high", rig_id="rig-2", size=SIZE, doubt=0.9, version=3, seed=1),
        review_scan("s-mid", size=SIZE, doubt=0.6, seed=2), review_scan("s-low", size=SIZE, doubt=0.3, seed=3),
        review_scan("s-last", size=SIZE, doubt=0.1, seed=4)])
    prelabel = tensor_to_array(review_scan("s-high", size=SIZE).mask, "mask")
    async with running_console(cfg) as url, client(url, tokens["ben"]) as ben_api, chromium() as browser:
        await wait_for_queue(ben_api, 4)
        ben = await browser.logged_in(url, "ben", PASSWORD, SCREEN)
        ann = await browser.logged_in(url, "ann", PASSWORD, SCREEN)
        for page in (ann, ben):
            await until(page, "document.querySelectorAll('.queue-item').length === 4")
        assert await queue_ids(ann) == ["s-high", "s-mid", "s-low", "s-last"]  # most doubtful first
        assert await ann.text_content("#counts") == "4 queued · 0 claimed · 0 labeled · 0 rejected"
        await ann.select_option("#rig-filter", "rig-2")
        await until(ann, "document.querySelectorAll('.queue-item').length === 1")
        assert await queue_ids(ann) == ["s-high"]
        await ann.select_option("#rig-filter", "")
        await until(ann, "document.querySelectorAll('.queue-item').length === 4")

        await ann.click(".queue-item >> nth=0")
        await opened(ann, "s-high")
        assert (await state(ann))["leaseUntil"] > 0 and "yours until" in await ann.text_content("#lease")
        np.testing.assert_array_equal(await page_labels(ann), prelabel)

        # Ben is not offered ann's scan: not by the API, not in his page, and opening it anyway is refused.
        assert "s-high" not in [i["scan_id"] for i in (await ben_api.get("/api/review")).json()["items"]]
        await until(ben, "![...document.querySelectorAll('.queue-item')].some("
                                    "(e) => e.dataset.scanId === 's-high')", timeout=15_000)
        assert await ben.evaluate("reviewStation.open('s-high')") is False
        assert "claimed by ann" in await ben.text_content("#queue-message")
        assert (await state(ben))["scanId"] is None

        # An integer zoom and offset: each scan pixel is a 4 x 4 block whose centre the mouse can hit.
        await ann.evaluate("reviewStation.setView(4, 16, 16)")
        expected = prelabel.copy()
        await ann.keyboard.press("1")
        await ann.keyboard.press("b")
        for _ in range(2):
            await ann.keyboard.press("[")
        assert (await state(ann))["radius"] == 2 and await ann.text_content("#size-value") == "2"
        crack = [(70, 60), (100, 62), (110, 80)]
        await drag(ann, crack)
        stroke(expected, crack, 2, CRACK)

        await ann.keyboard.press("e")
        await ann.keyboard.press("[")
        cut = [(36, 18), (37, 34)]  # through the pre-label's crack, leaving two pieces
        await drag(ann, cut)
        stroke(expected, cut, 1, 0)
        np.testing.assert_array_equal(await page_labels(ann), expected)

        await ann.keyboard.press("b")
        await drag(ann, [(10, 80), (30, 88)])  # a stray stroke, undone, redone, undone again
        assert (await state(ann))["undo"] == 3
        await ann.keyboard.press("Control+z")
        await ann.keyboard.press("Control+Shift+z")
        await ann.keyboard.press("Control+y")  # nothing left to redo
        await ann.keyboard.press("Control+z")
        assert ((await state(ann))["undo"], (await state(ann))["redo"]) == (2, 1)
        np.testing.assert_array_equal(await page_labels(ann), expected)

        await ann.keyboard.press("4")
        await ann.keyboard.press("f")
        await ann.mouse.click(*await at(ann, 40, 26))  # the right-hand piece becomes an inclusion
        flood(expected, 40, 26, INCLUSION)
        assert {0, CRACK, INCLUSION} == set(np.unique(expected))
        np.testing.assert_array_equal(await page_labels(ann), expected)
        assert (await state(ann))["changed"] == int((expected != prelabel).sum())

        await ann.keyboard.press("0")  # fit, for the picture of the station
        await ann.screenshot(path=str(screenshots / "review.png"))

        await ann.fill("#domain", "ut-test")
        await ann.click("#submit")
        await until(ann, "document.querySelector('#action-message').textContent.includes('labeled')")
        assert "ut-test" in await ann.text_content("#action-message")
        await opened(ann, "s-mid")  # on to the next one, claimed
        assert "s-mid" not in [i["scan_id"] for i in (await ben_api.get("/api/review")).json()["items"]]

        await ann.click("#accept")
        await opened(ann, "s-low")
        await ann.select_option("#reject-reason", "unusable scan")
        await ann.fill("#reject-text", "gain saturated")
        await ann.click("#reject")
        await opened(ann, "s-last")
        finished = (await ben_api.get("/api/review/finished")).json()["items"]
        assert {(i["scan_id"], i["state"], i["by"]) for i in finished} == {
            ("s-high", "labeled", "ann"), ("s-mid", "labeled", "ann"), ("s-low", "rejected", "ann")}
        assert [i["reason"] for i in finished if i["scan_id"] == "s-low"] == ["unusable scan: gain saturated"]
        assert browser.errors == []

    labeled = {m.scan_id: m for m in await read_labeled(broker.bootstrap, 2)}
    assert sorted(labeled) == ["s-high", "s-mid"]
    high = labeled["s-high"]
    assert (high.labeled_by, high.prelabel_version, high.domain, high.rig_id) == ("ann", 3, "ut-test", "rig-2")
    np.testing.assert_array_equal(tensor_to_array(high.mask, "mask"), expected)
    np.testing.assert_array_equal(tensor_to_array(labeled["s-mid"].mask, "mask"), prelabel)  # accepted unchanged


async def test_a_viewer_sees_the_queue_and_the_scan_but_may_change_nothing(station, broker):
    cfg, tokens = station
    await produce_reviews(broker.bootstrap, [review_scan("s1", size=SIZE, doubt=0.7, seed=1)])
    async with running_console(cfg) as url, client(url, tokens["vic"]) as vic_api, chromium() as browser:
        await wait_for_queue(vic_api, 1)
        vic = await browser.logged_in(url, "vic", PASSWORD, SCREEN)
        await vic.wait_for_selector(".queue-item")
        for hidden in ("#edit-tools", "#actions", "#open-next", "#accept", "#submit", "#reject"):
            assert await vic.is_hidden(hidden), hidden
        await vic.click(".queue-item")
        await opened(vic, "s1")
        assert (await vic_api.get("/api/review/s1")).json()["claimed_by"] is None  # looking claims nothing
        assert await vic.is_visible("#view") and await vic.is_hidden("#stage-empty")

        fitted = await state(vic)
        await vic.click("#regions tr")  # the model's crack, framed with its surroundings
        assert (await state(vic))["scale"] > fitted["scale"]
        await vic.keyboard.press("h")
        assert (await state(vic))["label"] is False
        await vic.keyboard.press("0")
        before = await state(vic)
        assert before["scale"] == fitted["scale"]
        await vic.keyboard.press("b")
        await drag(vic, [(20, 20), (60, 50)])  # a viewer's drag pans
        after = await state(vic)
        assert after["tool"] == "pan" and after["changed"] == 0 and after["tx"] != before["tx"]
        np.testing.assert_array_equal(await page_labels(vic),
                                      tensor_to_array(review_scan("s1", size=SIZE).mask, "mask"))

        refused = await vic.evaluate("""async () => {
            const codes = [];
            for (const [path, options] of [["/claim", {}], ["/reject", {json: {reason: "other"}}],
                                           ["/label", {body: new Uint8Array([137, 80]), headers: {}}]]) {
                try { await Console.api("/api/review/s1" + path, {method: "POST", ...options}); codes.push(200); }
                catch (error) { codes.push(error.status); }
            }
            return codes;
        }""")
        assert refused == [403, 403, 403]
        assert (await vic_api.post("/api/review/s1/claim")).status_code == 403
        assert (await vic_api.post("/api/review/s1/label", content=class_png(np.zeros(SIZE)))).status_code == 403
        assert (await vic_api.post("/api/review/s1/reject", json={"reason": "other"})).status_code == 403
        assert (await vic_api.get("/api/review/s1")).json()["state"] == "queued"
        assert browser.errors == []


async def test_a_tablet_paints_with_touch_and_pinches_to_zoom(station, broker):
    cfg, tokens = station
    await produce_reviews(broker.bootstrap, [review_scan("t1", size=SIZE, doubt=0.8, version=2, seed=5)])
    async with running_console(cfg) as url, client(url, tokens["ben"]) as ben_api, chromium() as browser:
        await wait_for_queue(ben_api, 1)
        ben = await browser.logged_in(url, "ben", PASSWORD, TABLET)
        await ben.click(".queue-item")
        await opened(ben, "t1")
        stage = await ben.eval_on_selector("#view", "c => c.getBoundingClientRect().toJSON()")
        assert stage["width"] > 900 and stage["y"] < 400  # the scan on top, full width

        touch = await ben.context.new_cdp_session(ben)
        await touch.send("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})

        async def fingers(kind: str, *points: tuple[float, float]) -> None:
            await touch.send("Input.dispatchTouchEvent", {
                "type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]})

        await ben.evaluate("reviewStation.setView(4, 16, 16)")
        await ben.click("#class-2")
        expected = tensor_to_array(review_scan("t1", size=SIZE).mask, "mask").copy()
        path = [(20, 70), (50, 75), (60, 90)]
        await fingers("touchStart", await at(ben, *path[0]))
        for point in path[1:]:
            await fingers("touchMove", await at(ben, *point))
        await fingers("touchEnd")
        stroke(expected, path, 4, POROSITY)
        np.testing.assert_array_equal(await page_labels(ben), expected)

        a, b = await at(ben, 60, 40), await at(ben, 80, 40)  # two fingers spread apart: zoom, paint nothing
        await fingers("touchStart", a, b)
        await fingers("touchMove", (a[0] - 60, a[1]), (b[0] + 60, b[1]))
        await fingers("touchEnd")
        assert (await state(ben))["scale"] > 4
        np.testing.assert_array_equal(await page_labels(ben), expected)

        await ben.click("#submit")
        await until(ben, "document.querySelector('#action-message').textContent.includes('labeled')")
        assert browser.errors == []

    [message] = await read_labeled(broker.bootstrap, 1)
    assert (message.scan_id, message.labeled_by, message.prelabel_version) == ("t1", "ben", 2)
    np.testing.assert_array_equal(tensor_to_array(message.mask, "mask"), expected)
