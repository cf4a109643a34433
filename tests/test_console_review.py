"""The review station's API against a real broker: the queue, claims and leases, labels on Kafka with the
exact mask, refusals with their reasons, CSRF, roles, and a restart that loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.console_stack import (
    PASSWORD,
    add_account,
    class_png,
    client,
    console_config,
    png_array,
    produce_reviews,
    read_labeled,
    review_scan,
    running_console,
    wait_for_queue,
)
from weldstream.codec import tensor_to_array


@pytest.fixture
def accounts(tmp_path, broker):
    cfg = console_config(tmp_path, broker.bootstrap)
    return cfg, {name: add_account(cfg, name, role) for name, role in
                 (("ann", "inspector"), ("ben", "inspector"), ("vic", "viewer"), ("ops", "operator"))}


async def test_an_inspector_labels_the_most_doubtful_scan_and_kafka_gets_exactly_the_mask(accounts, broker):
    cfg, tokens = accounts
    await produce_reviews(broker.bootstrap, [review_scan("s-low", doubt=0.2, seed=1),
                                             review_scan("s-high", rig_id="rig-2", doubt=0.9, seed=2, version=3),
                                             review_scan("s-mid", doubt=0.5, seed=3)])
    async with running_console(cfg) as url, client(url, tokens["ann"]) as ann, client(url, tokens["ben"]) as ben:
        items = await wait_for_queue(ann, 3)
        assert [i["scan_id"] for i in items] == ["s-high", "s-mid", "s-low"]  # most doubtful first
        assert items[0] == {"scan_id": "s-high", "rig_id": "rig-2", "domain": "", "doubt": pytest.approx(0.9),
                            "version": 3, "reasons": ["doubt"]}
        assert [i["scan_id"] for i in (await ann.get("/api/review", params={"rig": "rig-2"})).json()["items"]] \
            == ["s-high"]

        claimed = await ann.post("/api/review/s-high/claim")
        assert claimed.status_code == 200 and claimed.json()["lease_until"] > time.time() + 590
        assert "s-high" not in [i["scan_id"] for i in (await ben.get("/api/review")).json()["items"]]
        assert (await ben.post("/api/review/s-high/claim")).status_code == 409

        scan = png_array((await ann.get("/api/review/s-high/scan.png")).content)
        prelabel = png_array((await ann.get("/api/review/s-high/prelabel.png")).content)
        assert scan.dtype == np.uint8 and scan.shape == (48, 64) and scan.max() > 200 and scan.min() < 50
        assert prelabel.shape == (48, 64) and set(np.unique(prelabel)) == {0, 1}

        painted = prelabel.copy()
        painted[12:14, :] = 0  # erase part of the pre-label
        painted[30:34, 40:50] = 2  # paint porosity
        assert (await ben.post("/api/review/s-high/label", content=class_png(painted))).status_code == 409
        answer = await ann.post("/api/review/s-high/label", params={"domain": "ut-pe100"}, content=class_png(painted),
                                headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["pixels_changed"] == int((painted != prelabel).sum())
        again = await ann.post("/api/review/s-high/label", content=class_png(painted))
        assert again.status_code == 409 and "already labeled" in again.json()["detail"]

        # A label without a claim, on a scan nobody holds; its domain defaults to the rig's last labeled one.
        assert (await ann.post("/api/review/s-mid/label", content=class_png(painted))).status_code == 200

    records = await read_labeled(broker.bootstrap, 2)
    labeled = {m.scan_id: m for m in records}
    assert len(records) == 2 and sorted(labeled) == ["s-high", "s-mid"]  # once each, in any order across partitions
    first = labeled["s-high"]
    assert (first.rig_id, first.domain, first.labeled_by, first.prelabel_version) == ("rig-2", "ut-pe100", "ann", 3)
    assert first.labeled_at.seconds >= int(time.time()) - 60
    np.testing.assert_array_equal(tensor_to_array(first.mask, "mask"), painted)
    np.testing.assert_array_equal(tensor_to_array(first.image.tensor, "image"),
                                  tensor_to_array(review_scan("s-high", seed=2).image.tensor, "image"))
    assert labeled["s-mid"].domain == "rig-1"  # rig-1 had no labeled scan yet: the rig id


async def test_bad_labels_are_refused_naming_the_problem(accounts, broker):
    cfg, tokens = accounts
    await produce_reviews(broker.bootstrap, [review_scan("s1")])
    async with running_console(cfg) as url, client(url, tokens["ann"]) as ann:
        await wait_for_queue(ann, 1)
        cases = {
            "not a PNG": (b"GIF89a....", "is not a PNG"),
            "wrong size": (class_png(np.zeros((64, 48), np.uint8)), "is 48x64 px; the scan is 64x48"),
            "class above 4": (class_png(np.full((48, 64), 5, np.uint8)), "has class 5"),
            "RGB": (class_png(np.zeros((48, 64, 3), np.uint8)), "one byte a pixel"),
        }
        for name, (body, expected) in cases.items():
            answer = await ann.post("/api/review/s1/label", content=body)
            assert answer.status_code == 400 and expected in answer.json()["detail"], (name, answer.text)
        assert (await ann.post("/api/review/nope/label", content=class_png(np.zeros((48, 64))))).status_code == 404
        # Nothing refused was taken: the item is still offered.
        assert [i["scan_id"] for i in (await ann.get("/api/review")).json()["items"]] == ["s1"]


async def test_roles_and_csrf_guard_every_change(accounts, broker):
    cfg, tokens = accounts
    await produce_reviews(broker.bootstrap, [review_scan("s1")])
    async with running_console(cfg) as url, client(url, tokens["vic"]) as viewer, client(url) as browser:
        await wait_for_queue(viewer, 1)
        refused = await viewer.post("/api/review/s1/claim")
        assert refused.status_code == 403 and "viewer" in refused.json()["detail"]
        assert (await viewer.post("/api/review/s1/reject", json={"reason": "not a weld"})).status_code == 403
        assert (await client(url, "wst_forged").get("/api/review")).status_code == 401
        assert (await browser.get("/api/review")).status_code == 401

        assert (await browser.post("/api/login", json={"name": "ann", "password": "wrong"})).status_code == 401
        login = await browser.post("/api/login", json={"name": "ann", "password": PASSWORD})
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        csrf = login.json()["csrf"]
        no_token = await browser.post("/api/review/s1/claim")
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
        assert (await browser.post("/api/review/s1/claim", headers={"x-csrf-token": "guess"})).status_code == 403
        assert (await browser.post("/api/review/s1/claim", headers={"x-csrf-token": csrf})).status_code == 200
        assert (await browser.get("/api/review/s1")).json()["claimed_by"] == "ann"


async def test_an_expired_lease_lets_another_inspector_take_the_item(accounts, broker):
    cfg, tokens = accounts
    from dataclasses import replace
    cfg = replace(cfg, lease_s=1.0)
    await produce_reviews(broker.bootstrap, [review_scan("s1")])
    async with running_console(cfg) as url, client(url, tokens["ann"]) as ann, client(url, tokens["ben"]) as ben:
        await wait_for_queue(ann, 1)
        assert (await ann.post("/api/review/s1/claim")).status_code == 200
        assert (await ben.post("/api/review/s1/claim")).status_code == 409
        await asyncio.sleep(1.5)
        assert [i["scan_id"] for i in (await ben.get("/api/review")).json()["items"]] == ["s1"]
        assert (await ben.post("/api/review/s1/claim")).status_code == 200
        late = await ann.post("/api/review/s1/reject", json={"reason": "not a weld"})
        assert late.status_code == 409 and "claimed by ben" in late.json()["detail"]
        assert (await ben.post("/api/review/s1/reject", json={"reason": "not a weld"})).status_code == 200
        assert (await ben.get("/api/review/s1")).json()["state"] == "rejected"


async def test_a_restart_loses_no_queued_or_claimed_item_and_duplicates_no_label(accounts, broker):
    cfg, tokens = accounts
    await produce_reviews(broker.bootstrap, [review_scan(f"s{i}", doubt=i / 10, seed=i) for i in range(4)])
    blank = class_png(np.zeros((48, 64), np.uint8))
    async with running_console(cfg) as url, client(url, tokens["ann"]) as ann:
        await wait_for_queue(ann, 4)
        assert (await ann.post("/api/review/s3/label", content=blank)).status_code == 200
        assert (await ann.post("/api/review/s2/claim")).status_code == 200
    await produce_reviews(broker.bootstrap, [review_scan("s4", doubt=0.05, seed=4), review_scan("s1", doubt=0.1)])
    async with running_console(cfg) as url, client(url, tokens["ann"]) as ann, client(url, tokens["ben"]) as ben:
        assert [i["scan_id"] for i in await wait_for_queue(ann, 4)] == ["s2", "s1", "s4", "s0"]
        assert [i["scan_id"] for i in (await ben.get("/api/review")).json()["items"]] == ["s1", "s4", "s0"]
        assert (await ben.post("/api/review/s2/claim")).status_code == 409  # ann's claim survived
        assert (await ann.post("/api/review/s3/label", content=blank)).status_code == 409
        assert (await ann.post("/api/review/s2/label", content=blank)).status_code == 200
    labeled = await read_labeled(broker.bootstrap, 2)
    assert sorted(m.scan_id for m in labeled) == ["s2", "s3"]  # once each
