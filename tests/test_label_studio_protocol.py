"""Label Studio's protocol without Label Studio: brush RLE round trips through the SDK's own converter, the
threshold and overlap rules, and the console's ML backend and webhook refusing bad payloads clearly; a
webhook delivered twice, updated and deleted against a real broker, and one Kafka does not acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from tests.console_stack import add_account, console_config, read_labeled, review_scan
from weldstream.codec import tensor_to_array
from weldstream.console import label_studio_annotations
from weldstream.console.app import create_app
from weldstream.console.label_studio_brush import (
    ALPHA_THRESHOLD,
    labelling_config,
    mask_to_results,
    results_to_mask,
    sdk_brush,
)
from weldstream.console.services import open_services
from weldstream.topics import ensure_topics

try:
    brush = sdk_brush()
except RuntimeError as exc:
    pytest.skip(str(exc), allow_module_level=True)


def blobs(size: int, seed: int) -> np.ndarray:
    """A class map like a person paints: discs and strokes of every defect class, some overlapping."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(12):
        cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(2, max(3, size // 8)))]
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(1, 5)
    row = int(rng.integers(0, size - 3))
    mask[row:row + 3, size // 4: 3 * size // 4] = 1  # a crack-like stroke
    return mask


@pytest.mark.parametrize("size", [64, 256, 1024, 2048])
def test_masks_round_trip_through_label_studios_rle(size: int):
    mask = blobs(size, seed=size)
    results = mask_to_results(mask)
    assert sorted(r["value"]["brushlabels"][0] for r in results) == sorted(
        name for i, name in enumerate(("crack", "porosity", "lack_of_fusion", "inclusion"), 1) if (mask == i).any())
    for result in results:  # each layer is the SDK's RLE of exactly its class's pixels
        rgba = np.asarray(brush.decode_rle(result["value"]["rle"]), np.uint8).reshape(size, size, 4)
        index = 1 + ("crack", "porosity", "lack_of_fusion", "inclusion").index(result["value"]["brushlabels"][0])
        assert np.array_equal(rgba[:, :, 3] > 0, mask == index)
    assert np.array_equal(results_to_mask(results, size, size), mask)


def test_a_clean_scan_has_no_layers_and_an_empty_annotation_is_background():
    assert mask_to_results(np.zeros((64, 64), np.uint8)) == []
    assert not results_to_mask([], 64, 64).any()


def layer(alpha: np.ndarray, name: str) -> dict:
    """A brush layer as Label Studio's editor saves it: RGBA with anti-aliased alpha, in the SDK's RLE."""
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, alpha
    rle = sdk_brush().encode_rle(rgba.ravel())
    return {"type": "brushlabels", "from_name": "defects", "to_name": "image", "original_width": alpha.shape[1],
            "original_height": alpha.shape[0], "value": {"format": "rle", "rle": rle, "brushlabels": [name]}}


def test_anti_aliased_edges_count_from_half_coverage():
    alpha = np.zeros((8, 8), np.uint8)
    alpha[2, 2], alpha[2, 3], alpha[2, 4], alpha[2, 5] = 255, ALPHA_THRESHOLD, ALPHA_THRESHOLD - 1, 1
    mask = results_to_mask([layer(alpha, "porosity")], 8, 8)
    assert mask[2].tolist() == [0, 0, 2, 2, 0, 0, 0, 0] and mask.sum() == 4


def test_overlaps_go_to_the_more_severe_class():
    full = np.full((4, 4), 255, np.uint8)
    for weaker, stronger in (("porosity", "crack"), ("inclusion", "lack_of_fusion"), ("porosity", "inclusion")):
        for order in ((weaker, stronger), (stronger, weaker)):
            mask = results_to_mask([layer(full, name) for name in order], 4, 4)
            assert set(np.unique(mask)) == {("crack", "porosity", "lack_of_fusion", "inclusion").index(stronger) + 1}


def test_the_labelling_config_names_every_defect_class_with_its_colour():
    config = labelling_config()
    assert '<BrushLabels name="defects" toName="image">' in config and 'value="$image"' in config
    assert '<Label value="crack" background="#e62828"/>' in config and "background=" not in config.split("crack")[0]
    assert all(f'value="{name}"' in config for name in ("porosity", "lack_of_fusion", "inclusion"))


# --- the console's ML backend and webhook -------------------------------------------------------------------

@contextlib.asynccontextmanager
async def console(tmp_path, kafka: str | None = None):
    """The console app in process with one queued scan (48 x 64) and tokens for an inspector and a viewer."""
    cfg = console_config(tmp_path, kafka)
    tokens = {name: add_account(cfg, name, role) for name, role in (("lsbot", "inspector"), ("vic", "viewer"))}
    svc = open_services(cfg)
    svc.queue.add(review_scan("scan-1", version=4))
    if kafka:
        await ensure_topics(kafka)
        svc.producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=False)
        await svc.producer.start()
    app = create_app(cfg, svc)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console",
                             headers={"Authorization": f"Bearer {tokens['lsbot']}"}, timeout=60)
    try:
        yield http, svc, tokens
    finally:
        await http.aclose()
        if svc.producer is not None:
            await svc.producer.stop()
        svc.registry.close()


def hook(mask: np.ndarray | None = None, *, action: str = "ANNOTATION_CREATED", annotation_id: int = 7,
         updated_at: str = "2026-01-01T10:00:00Z", scan_id: str | None = "scan-1", results: list | None = None) -> dict:
    data = {"scan_id": scan_id, "rig_id": "rig-1", "domain": "ut-pipe"} if scan_id else {"image": "x"}
    return {"action": action, "project": {"id": 1},
            "task": {"id": 3, "data": data},
            "annotation": {"id": annotation_id, "task": 3, "completed_by": 1, "updated_at": updated_at,
                           "was_cancelled": False, "result": mask_to_results(mask) if results is None else results}}


def painted() -> np.ndarray:
    mask = np.zeros((48, 64), np.uint8)
    mask[5:15, 10:30] = 1
    mask[30:40, 40:60] = 3
    return mask


async def test_bad_payloads_are_refused_naming_the_problem(tmp_path):
    async with console(tmp_path) as (http, svc, tokens):
        assert (await http.get("/label-studio/health")).json()["status"] == "UP"
        unknown = layer(np.full((48, 64), 255, np.uint8), "undercut")
        answer = await http.post("/label-studio/webhook", json=hook(results=[unknown]))
        assert answer.status_code == 400 and "'undercut' is not a defect class" in answer.json()["detail"]
        small = mask_to_results(np.ones((10, 12), np.uint8))
        answer = await http.post("/label-studio/webhook", json=hook(results=small))
        assert answer.status_code == 400 and "is a 12x10 brush layer; the scan is 64x48" in answer.json()["detail"]
        answer = await http.post("/label-studio/webhook", json=hook(painted(), scan_id=None))
        assert answer.status_code == 400 and "task.data.scan_id: is missing" in answer.json()["detail"]
        answer = await http.post("/label-studio/webhook", json=hook(painted(), scan_id="never-queued"))
        assert answer.status_code == 404 and "not in the review queue" in answer.json()["detail"]
        bad_rle = hook(painted())
        bad_rle["annotation"]["result"][0]["value"]["rle"] = [0, 0, 0, 9, 1, 2, 3, 4]
        answer = await http.post("/label-studio/webhook", json=bad_rle)
        assert answer.status_code == 400 and "RGBA values" in answer.json()["detail"]
        answer = await http.post("/label-studio/webhook", content=b"{not json", headers={"content-type": "text/json"})
        assert answer.status_code == 400 and "not JSON" in answer.json()["detail"]
        huge = json.dumps({"action": "ANNOTATION_CREATED", "pad": "x" * (50 << 20)}).encode()
        answer = await http.post("/label-studio/webhook", content=huge)
        assert answer.status_code == 413 and "at most 32 MiB" in answer.json()["detail"]
        answer = await http.post("/label-studio/predict", json={"tasks": [{"id": 3, "data": {"image": "x"}}]})
        assert answer.status_code == 400 and "tasks[0].data.scan_id is missing" in answer.json()["detail"]
        assert (await http.post("/label-studio/predict", json={"tasks": []})).status_code == 400
        # who may call: an inspector's token, as a bearer or as basic auth with its account name
        anonymous = await http.post("/label-studio/webhook", json=hook(painted()), headers={"Authorization": ""})
        assert anonymous.status_code == 401
        viewer = await http.post("/label-studio/webhook", json=hook(painted()),
                                 headers={"Authorization": f"Bearer {tokens['vic']}"})
        assert viewer.status_code == 403
        wrong_name = await http.post("/label-studio/predict", json={"tasks": [{"data": {"scan_id": "scan-1"}}]},
                                     auth=("vic", tokens["lsbot"]))
        assert wrong_name.status_code == 401
        # no Kafka: the label is refused with 503 and nothing is recorded, so a later delivery sends it
        answer = await http.post("/label-studio/webhook", json=hook(painted()))
        assert answer.status_code == 503 and "sync" in answer.json()["detail"]
        assert svc.registry.query("SELECT COUNT(*) FROM label_studio_revisions")[0][0] == 0
        assert svc.queue.get("scan-1").state == "queued"


async def test_one_record_per_revision_and_deletions_recorded(tmp_path, broker):
    async with console(tmp_path, broker.bootstrap) as (http, svc, _):
        first = await http.post("/label-studio/webhook", json=hook(painted()))
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "sent" and first.json()["prelabel_version"] == 4
        again = await http.post("/label-studio/webhook", json=hook(painted()))
        assert again.json()["status"].startswith("duplicate")
        updated = painted()
        updated[20:24, :] = 2
        answer = await http.post("/label-studio/webhook", json=hook(updated, action="ANNOTATION_UPDATED",
                                                                   updated_at="2026-01-01T10:05:00Z"))
        assert answer.json()["status"] == "sent"
        deleted = await http.post("/label-studio/webhook", json={"action": "ANNOTATIONS_DELETED",
                                                                  "annotations": [{"id": 7}], "project": {"id": 1}})
        assert deleted.status_code == 200
        records = await read_labeled(broker.bootstrap, 2, settle_s=1.0)
        assert [r.scan_id for r in records] == ["scan-1", "scan-1"]
        assert np.array_equal(tensor_to_array(records[0].mask, "mask"), painted())
        assert np.array_equal(tensor_to_array(records[1].mask, "mask"), updated)
        assert records[0].labeled_by == "label-studio:user-1" and records[0].domain == "ut-pipe"
        assert records[0].prelabel_version == 4 and records[0].image == review_scan("scan-1").image
        assert svc.queue.get("scan-1").state == "labeled"
        actions = [(a.action, a.actor) for a in svc.registry.actions()]
        assert ("label-studio-delete", "label-studio") in actions
        assert sum(1 for a in actions if a[0] == "label") == 2


async def test_a_label_kafka_does_not_acknowledge_is_refused_and_sent_by_the_next_delivery(tmp_path, broker,
                                                                                          monkeypatch):
    monkeypatch.setattr(label_studio_annotations, "SEND_TIMEOUT_S", 2.0)
    async with console(tmp_path, broker.bootstrap) as (http, svc, _):
        broker.stop()
        answer = await http.post("/label-studio/webhook", json=hook(painted()))
        assert answer.status_code == 503 and "Kafka did not acknowledge" in answer.json()["detail"]
        assert svc.registry.query("SELECT COUNT(*) FROM label_studio_revisions")[0][0] == 0
        broker.start()
        await ensure_topics(broker.bootstrap)
        for _ in range(20):  # the producer reconnects within a few deliveries
            answer = await http.post("/label-studio/webhook", json=hook(painted()))
            if answer.status_code == 200:
                break
            await asyncio.sleep(0.5)
        assert answer.status_code == 200 and answer.json()["status"] == "sent", answer.text
        records = await read_labeled(broker.bootstrap, 1, settle_s=1.0)
        assert records and all(np.array_equal(tensor_to_array(r.mask, "mask"), painted()) for r in records)
        again = await http.post("/label-studio/webhook", json=hook(painted()))
        assert again.json()["status"].startswith("duplicate")
