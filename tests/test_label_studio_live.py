"""Against a real Label Studio (1.23, in its own venv, started on loopback with a fresh data folder): push
review scans, let Label Studio ask the console's ML backend for predictions, annotate through its API with a
brush stroke that changes the pre-label, and read the LabeledScan back from Kafka; a duplicate webhook, an
update, a deletion, and a Kafka that is down while an annotation is submitted (`sync` brings it home).

Slow (Label Studio's first start runs its migrations, about two minutes): it runs only with
WELDSTREAM_LABEL_STUDIO_TESTS=1 and the venv of `python -m weldstream.dev.label_studio_env` (.ci/run does both).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from tests.browser import CHROMIUM, chromium
from tests.console_stack import (
    add_account,
    client,
    console_config,
    produce_reviews,
    review_scan,
    running_console,
    wait_for_queue,
    with_server,
)
from weldstream.cli import main as cli_main
from weldstream.codec import array_to_tensor, tensor_to_array
from weldstream.console import label_studio_annotations
from weldstream.console.label_studio_brush import sdk_brush
from weldstream.console.services import open_services
from weldstream.dev.broker import free_port
from weldstream.dev.label_studio_env import LabelStudioProcess, ready
from weldstream.simulator import generate_scan
from weldstream.topics import LABELED_SCANS, ensure_topics
from weldstream.v1 import stream_pb2, tensor_pb2

pytestmark = [pytest.mark.label_studio, pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("WELDSTREAM_LABEL_STUDIO_TESTS") != "1" or not ready(),
    reason="set WELDSTREAM_LABEL_STUDIO_TESTS=1 after `python -m weldstream.dev.label_studio_env`")]
try:
    brush = sdk_brush()
except RuntimeError as exc:
    pytest.skip(str(exc), allow_module_level=True)

USER, PASSWORD, TOKEN = "inspector@plant.example", "weldstream-ls-1", "5f1e" * 10
CLASSES = {"crack": 1, "porosity": 2, "lack_of_fusion": 3, "inclusion": 4}
SEVERITY = ("porosity", "inclusion", "lack_of_fusion", "crack")  # painted in this order: the last wins
SIZE = (192, 256)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    process = LabelStudioProcess(tmp_path_factory.mktemp("label-studio"), free_port(), USER, PASSWORD, TOKEN,
                                 extra_env={"WEBHOOK_TIMEOUT": "10"}).start()
    yield process
    process.stop()


def simulated(i: int, version: int) -> stream_pb2.ReviewScan:
    """A doubted scan of the simulator's X-ray domain, its true defects standing in for the served mask."""
    sample = generate_scan("xray-film-steel-x52", 40 + i, SIZE)
    scan = review_scan(f"ls-{i}", doubt=1 - i / 10, version=version, size=SIZE)
    scan.image.CopyFrom(tensor_pb2.Image(tensor=array_to_tensor(sample.image)))
    scan.mask.CopyFrom(array_to_tensor(sample.mask))
    return scan


def pixels(results: list[dict], height: int, width: int) -> np.ndarray:
    """The class map an annotation's brush layers paint, read with the SDK alone (alpha >= 128, most severe wins)."""
    mask = np.zeros((height, width), np.uint8)
    layers = {}
    for r in results:
        alpha = np.asarray(brush.decode_rle(r["value"]["rle"]), np.uint8).reshape(height, width, 4)[:, :, 3]
        name = r["value"]["brushlabels"][0]
        layers[name] = layers.get(name, np.zeros_like(alpha, bool)) | (alpha >= 128)
    for name in SEVERITY:
        if name in layers:
            mask[layers[name]] = CLASSES[name]
    return mask


def stroke(name: str, height: int, width: int, row: int, col: int, radius: float) -> dict:
    """A round brush dab as Label Studio's editor saves it: RGBA with an anti-aliased rim."""
    yy, xx = np.mgrid[:height, :width]
    alpha = np.clip((radius - np.hypot(yy - row, xx - col)) * 255, 0, 255).astype(np.uint8)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, alpha
    return {"id": f"dab-{name}-{row}-{col}", "from_name": "defects", "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": brush.encode_rle(rgba.ravel()), "brushlabels": [name]}}


class Labeled:
    """A consumer of the labeled topic that is already listening, so arrival times are measured."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(LABELED_SCANS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                         enable_auto_commit=False, metadata_max_age_ms=1000)
        self.seen: list[tuple[float, stream_pb2.LabeledScan]] = []

    async def wait(self, count: int, timeout_s: float = 60.0) -> list[tuple[float, stream_pb2.LabeledScan]]:
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < count and time.monotonic() < deadline:
            for records in (await self.consumer.getmany(timeout_ms=50)).values():
                for record in records:
                    message = stream_pb2.LabeledScan()
                    message.ParseFromString(record.value)
                    self.seen.append((time.time(), message))
        assert len(self.seen) >= count, f"{len(self.seen)} labeled scans, expected {count}"
        return self.seen


@contextlib.asynccontextmanager
async def labeled(bootstrap: str):
    reader = Labeled(bootstrap)
    await reader.consumer.start()
    try:
        yield reader
    finally:
        await reader.consumer.stop()


def cli(*argv: str) -> int:
    return cli_main([*argv, "--log-level", "WARNING"])


async def test_a_label_studio_annotation_reaches_kafka_once_per_revision(label_studio, broker, server, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(label_studio_annotations, "SEND_TIMEOUT_S", 3.0)
    cfg = with_server(console_config(tmp_path, broker.bootstrap), f"127.0.0.1:{server.port}")
    console_token = add_account(cfg, "lsbot", "inspector")
    (tmp_path / "ls-token").write_text(TOKEN)
    (tmp_path / "console-token").write_text(console_token)
    served = server.slot.current().version
    await produce_reviews(broker.bootstrap, [simulated(i, served + 5) for i in (1, 2, 3)])
    height, width = SIZE
    async with running_console(cfg) as url, client(url, console_token) as console_http, \
            httpx.AsyncClient(base_url=label_studio.url, headers={"Authorization": f"Token {TOKEN}"},
                              timeout=120) as ls:
        await wait_for_queue(console_http, 3)
        common = ["--label-studio-url", label_studio.url, "--label-studio-token-file", str(tmp_path / "ls-token"),
                  "--data-dir", str(cfg.data_dir), "--model-dir", str(cfg.model_dir), "--kafka", broker.bootstrap]
        push = ["label-studio", "push", *common, "--backend-url", f"{url}/label-studio",
                "--console-token-file", str(tmp_path / "console-token"), "--open-tasks", "2"]
        assert await asyncio.to_thread(cli, *push) == 0
        assert await asyncio.to_thread(cli, *push) == 0  # the project is reused, no task added past the limit
        projects = (await ls.get("/api/projects")).json()["results"]
        assert len(projects) == 1 and projects[0]["task_number"] == 2
        pid = projects[0]["id"]
        offered = (await console_http.get("/api/review")).json()["items"]
        assert [i["scan_id"] for i in offered] == ["ls-3"]  # the pushed two are held for Label Studio
        hooks = (await ls.get("/api/webhooks", params={"project": pid})).json()
        assert [h["url"] for h in hooks] == [f"{url}/label-studio/webhook"] and not hooks[0]["send_for_all_actions"]

        # Label Studio asks the backend (the live server) and stores its predictions beside the pushed pre-labels.
        asked = await ls.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                              json={"selectedItems": {"all": True, "excluded": []}})
        assert asked.status_code == 200, asked.text
        tasks = {t["data"]["scan_id"]: t for t in (await ls.get(
            f"/api/projects/{pid}/export", params={"exportType": "JSON", "download_all_tasks": "true"})).json()}
        assert sorted(tasks) == ["ls-1", "ls-2"]
        predictions = {scan_id: (await ls.get("/api/predictions", params={"task": t["id"]})).json()
                       for scan_id, t in tasks.items()}
        for found in predictions.values():
            assert {p["model_version"] for p in found} == {f"v{served + 5}", f"v{served}"}, found
        live = next(p for p in predictions["ls-1"] if p["model_version"] == f"v{served}")

        if CHROMIUM.exists():
            await screenshot(label_studio.url, pid, tasks["ls-2"]["id"], f"v{served + 5}", tmp_path / "task.png")

        async with labeled(broker.bootstrap) as reader:
            # An annotation: the live pre-label plus a porosity dab over part of it.
            result = [*live["result"], stroke("porosity", height, width, height // 4 + 3, width // 4 + 5, 6.5)]
            expected = pixels(result, height, width)
            assert not np.array_equal(expected, pixels(live["result"], height, width))
            started = time.time()
            made = await ls.post(f"/api/tasks/{tasks['ls-1']['id']}/annotations", json={"result": result})
            answered = time.time()
            assert made.status_code == 201, made.text
            arrived, record = (await reader.wait(1))[0]
            delays = [(answered - started, arrived - started)]
            assert record.scan_id == "ls-1" and np.array_equal(tensor_to_array(record.mask, "mask"), expected)
            assert (record.labeled_by, record.prelabel_version, record.domain) == ("label-studio:user-1", served,
                                                                                  "rig-1")
            annotation = made.json()

            # Delivered twice (Label Studio's answer to a timeout, say): one record.
            task = (await ls.get(f"/api/tasks/{tasks['ls-1']['id']}")).json()
            again = await console_http.post("/label-studio/webhook", json={
                "action": "ANNOTATION_CREATED", "annotation": annotation, "task": task, "project": {"id": pid}})
            assert again.status_code == 200 and again.json()["status"].startswith("duplicate"), again.text

            # Updated: a new revision, a new record for the same scan.
            result2 = [*result, stroke("lack_of_fusion", height, width, height // 2, width // 2, 9.0)]
            started = time.time()
            patched = await ls.patch(f"/api/annotations/{annotation['id']}", json={"result": result2})
            answered = time.time()
            assert patched.status_code == 200, patched.text
            arrived, record2 = (await reader.wait(2))[1]
            delays.append((answered - started, arrived - started))
            assert record2.scan_id == "ls-1"
            assert np.array_equal(tensor_to_array(record2.mask, "mask"), pixels(result2, height, width))

            # sync finds both revisions on Kafka already.
            sync = ["label-studio", "sync", *common]
            assert await asyncio.to_thread(cli, *sync) == 0

            # Deleted: recorded as an operator action; nothing more on Kafka.
            assert (await ls.delete(f"/api/annotations/{annotation['id']}")).status_code == 204

        # Kafka down while ls-2 is submitted: the webhook answers 503, Label Studio keeps the annotation, and
        # sync sends it once Kafka is back.
        broker.stop()
        dab = [stroke("inclusion", height, width, height // 3, width // 3, 5.0)]
        made = await ls.post(f"/api/tasks/{tasks['ls-2']['id']}/annotations", json={"result": dab})
        assert made.status_code == 201
        svc = open_services(cfg)
        try:
            assert svc.registry.query("SELECT COUNT(*) FROM label_studio_revisions WHERE scan_id = 'ls-2' AND "
                                      "state = 'sent'")[0][0] == 0
            actions = [a.action for a in svc.registry.actions()]
            assert "label-studio-delete" in actions
        finally:
            svc.registry.close()
        broker.start()
        await ensure_topics(broker.bootstrap)
        async with labeled(broker.bootstrap) as reader:
            for _ in range(10):  # as `sync --every-s` would: a broker just back may refuse the first produce
                if await asyncio.to_thread(cli, *sync) == 0:
                    break
                await asyncio.sleep(1.0)
            seen = await reader.wait(1)
            assert {m.scan_id for _, m in seen} == {"ls-2"}
            assert all(np.array_equal(tensor_to_array(m.mask, "mask"), pixels(dab, height, width)) for _, m in seen)
        assert await asyncio.to_thread(cli, *sync) == 0  # and once only

    report = ", ".join(f"API answered {a * 1000:.0f} ms, on Kafka {k * 1000:.0f} ms" for a, k in delays)
    print(f"\nsubmit -> LabeledScan on Kafka ({width}x{height}): {report}; median on Kafka "
          f"{statistics.median(k for _, k in delays) * 1000:.0f} ms")


async def screenshot(base_url: str, project_id: int, task_id: int, version: str, path: Path) -> None:
    """The task as an inspector sees it in Label Studio, with weldstream's pre-labels of ``version`` shown."""
    async with chromium() as browser:
        page = await browser.page(base_url)
        await page.goto("/user/login/")
        await page.fill("input[name=email]", USER)
        await page.fill("input[name=password]", PASSWORD)
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        await page.goto(f"/projects/{project_id}/data?task={task_id}")
        await page.wait_for_selector("canvas", timeout=60_000)
        await page.get_by_text(version, exact=True).first.click()
        await asyncio.sleep(4)
        await page.screenshot(path=str(path))
    target = os.environ.get("WELDSTREAM_LABEL_STUDIO_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(path.read_bytes())
