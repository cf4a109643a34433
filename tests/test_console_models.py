"""The models and rigs API against a real broker and real servers: an operator's pin, rollback and unpin
through the console reach both replicas and the registry; a consolidation job reports progress and ends
when cancelled; the rig watcher keeps per rig what the server's metrics say."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest

from tests.console_stack import add_account, client, console_config, running_console, with_server
from weldstream.announcements import announce_once
from weldstream.codec import array_to_tensor
from weldstream.console import rig_watch
from weldstream.dev.broker import free_port
from weldstream.model import ModelConfig, build_model
from weldstream.registry import Round, open_registry
from weldstream.server.app import InferenceServer
from weldstream.server.metrics import ServerMetrics
from weldstream.simulator.dataset import write_dataset
from weldstream.topics import MODELS, ensure_topics
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WEIGHTS_FILE, WeightStore

from .conftest import server_config
from .test_learner_stream import wait_for

DOMAINS = ("ut-pe100-5mhz", "xray-film-steel-x52", "ut-steel-x70")
FOLLOW_S = 15.0


def publish(store: WeightStore) -> int:
    """A new version with per-domain scores that move from version to version, as a learner's do."""
    version = (store.latest() or 0) + 1
    scores = {d: {"miou": round(0.45 + 0.04 * version - 0.07 * k + 0.03 * ((version + k) % 3), 4),
                  "dice": round(0.55 + 0.03 * version - 0.05 * k, 4), "samples": 40 + 8 * k}
              for k, d in enumerate(DOMAINS)}
    state = build_model(ModelConfig(), seed=version).state_dict()
    return store.publish(state, ModelConfig(), parent_version=version - 1, strategy="replay-gem",
                         scores=scores).version


def serving(replicas: list[InferenceServer], version: int) -> bool:
    return all(r.slot.current().version == version for r in replicas)


async def hearing_replicas(started, broker, model_dir: Path, count: int = 2) -> list[InferenceServer]:
    """Replicas on one model dir that poll it only every minute, and hear weld.models: they read it from its end
    once joined, so a new version is announced until all of them serve it."""
    await ensure_topics(broker.bootstrap)
    replicas = [await started(server_config(model_dir, kafka=broker.bootstrap, poll_interval_s=60,
                                            server_name=f"replica-{i}")) for i in range(count)]
    store = WeightStore(model_dir)
    newest = publish(store)
    deadline = time.monotonic() + 30
    while not serving(replicas, newest):
        assert time.monotonic() < deadline, "the replicas never heard an announcement"
        await announce_once(broker.bootstrap, MODELS, store.manifest(newest), "publish")
        await asyncio.sleep(1.0)
    return replicas


def segment(port: int, rigs: list[str], seed: int = 0) -> asyncio.Future:
    """One Segment call per rig id in ``rigs`` on the server at ``port``."""
    scan = (np.random.default_rng(seed).random((64, 64)) * 4095).astype(np.uint16)

    async def calls() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            for rig in rigs:
                await stub.Segment(segmenter_pb2.SegmentRequest(
                    scan_id=f"{rig}-{seed}", rig_id=rig, image=tensor_pb2.Image(tensor=array_to_tensor(scan))))

    return asyncio.ensure_future(calls())


async def test_an_operator_pins_rolls_back_and_unpins_and_both_replicas_follow(broker, tmp_path, started):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    for _ in range(3):
        publish(store)
    replicas = await hearing_replicas(started, broker, model_dir)  # they serve version 4
    cfg = console_config(tmp_path, broker.bootstrap, model_dir=model_dir)
    ops, vic = add_account(cfg, "ops", "operator"), add_account(cfg, "vic", "viewer")
    async with running_console(cfg) as url, client(url, ops) as http, client(url, vic) as viewer:
        listing = (await viewer.get("/api/models")).json()
        assert [v["version"] for v in listing["versions"]] == [1, 2, 3, 4]
        assert [v["parent"] for v in listing["versions"]] == [0, 1, 2, 3]
        assert listing["versions"][1]["scores"] == store.manifest(2).scores
        assert set(listing["versions"][1]["scores"][DOMAINS[0]]) == {"miou", "dice", "samples"}
        assert (listing["served"], listing["pinned"]) == (4, None) and listing["versions"][3]["served"]
        assert {r["server"]: r["version"] for r in listing["replicas"]} == {"replica-0": 4, "replica-1": 4}

        refused = await viewer.post("/api/models/pin", json={"version": 2, "reason": "audit"})
        assert refused.status_code == 403
        unknown = await http.post("/api/models/pin", json={"version": 99, "reason": "audit"})
        assert unknown.status_code == 400 and "version 99" in unknown.json()["detail"]
        assert (await http.get("/api/models/99")).status_code == 404

        pinned = await http.post("/api/models/pin", json={"version": 2, "reason": "audit"})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json() == {"action": "pin", "served_before": 4, "served_now": 2, "announced": True,
                                 "warning": ""}
        await wait_for(lambda: serving(replicas, 2), FOLLOW_S, "both replicas to follow the console's pin")
        rolled = await http.post("/api/models/rollback", json={"reason": "bad version"})  # the parent of 2
        assert rolled.json()["served_now"] == 1
        await wait_for(lambda: serving(replicas, 1), FOLLOW_S, "both replicas to follow the rollback")
        detail = (await viewer.get("/api/models/1")).json()
        assert detail["pinned"] and detail["served"] and detail["lineage"] == [1, 0]
        assert detail["manifest"]["sha256"] == store.manifest(1).sha256
        assert (await http.post("/api/models/unpin", json={"reason": "fixed"})).json()["served_now"] == 4
        await wait_for(lambda: serving(replicas, 4), FOLLOW_S, "both replicas to follow the unpin")

        listing = (await viewer.get("/api/models")).json()
        assert [(a["action"], a["version"], a["previous"], a["actor"], a["reason"]) for a in listing["actions"]] == [
            ("unpin", None, 1, "console:ops", "fixed"), ("rollback", 1, 2, "console:ops", "bad version"),
            ("pin", 2, 4, "console:ops", "audit")]
    registry = open_registry("", model_dir)
    try:
        assert [(a.action, a.actor) for a in registry.actions()] == [
            ("unpin", "console:ops"), ("rollback", "console:ops"), ("pin", "console:ops")]
    finally:
        registry.close()


async def test_refused_rounds_are_listed_and_a_damaged_version_is_not_pinned(tmp_path):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    publish(store)
    damaged = publish(store)
    weights = store.path_of(damaged) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    registry = open_registry("", model_dir)
    registry.record_round(Round("learner", "replay-gem", time.time(), 3.0, scans=12, steps=24, compared_with=1,
                                outcome="refused", reason="ut-pe100-5mhz mIoU fell 0.081 (p=0.99)"))
    registry.record_round(Round("learner", "replay-gem", time.time(), 3.0, scans=12, steps=24, compared_with=1,
                                outcome="promoted", version=1))
    registry.close()
    cfg = console_config(tmp_path, None, model_dir=model_dir)
    vic, ops = add_account(cfg, "vic", "viewer"), add_account(cfg, "ops", "operator")
    async with running_console(cfg) as url, client(url, vic) as viewer, client(url, ops) as http:
        listing = (await viewer.get("/api/models")).json()
        assert [(r["outcome"], r["reason"]) for r in listing["refused"]] == [
            ("refused", "ut-pe100-5mhz mIoU fell 0.081 (p=0.99)")]
        assert [r["outcome"] for r in (await viewer.get("/api/models/1")).json()["rounds"]] == ["promoted"]
        refused = await http.post("/api/models/pin", json={"version": damaged, "reason": "audit"})
        assert refused.status_code == 409 and f"version {damaged}" in refused.json()["detail"], refused.text
        assert (await viewer.get("/api/models")).json()["pinned"] is None
        pinned = (await http.post("/api/models/pin", json={"version": 1, "reason": "audit"})).json()
        assert pinned["announced"] is False and "next store poll" in pinned["warning"]  # a console without Kafka


async def test_a_consolidation_job_reports_progress_and_cancel_ends_it(tmp_path):
    for domain, seed in zip(DOMAINS[:2], (0, 50), strict=True):
        write_dataset(tmp_path / "scans" / domain, domain, 6, seed=seed, size=(64, 64))
    cfg = console_config(tmp_path, None)
    ops, vic = add_account(cfg, "ops", "operator"), add_account(cfg, "vic", "viewer")
    job_settings = {"strategy": "joint", "data": str(tmp_path / "scans"), "epochs": 500, "crop_size": 64,
                    "batch_size": 4, "crops_per_scan": 2, "device": "cpu"}
    async with running_console(cfg) as url, client(url, ops) as http, client(url, vic) as viewer:
        assert (await viewer.post("/api/consolidations", json=job_settings)).status_code == 403
        no_source = await http.post("/api/consolidations", json={"strategy": "joint"})  # no Kafka, no folder
        assert no_source.status_code == 400 and "--data" in no_source.json()["detail"]
        started = await http.post("/api/consolidations", json=job_settings)
        assert started.status_code == 200, started.text
        job = started.json()["job"]
        assert (await http.post("/api/consolidations", json=job_settings)).status_code == 409  # one at a time

        deadline = time.monotonic() + 180
        while True:
            view = (await viewer.get(f"/api/consolidations/{job}")).json()
            assert view["state"] == "running", view
            if view["done"] > 0:
                break
            assert time.monotonic() < deadline, f"no progress from the job: {view['detail']['log'][-5:]}"
            await asyncio.sleep(0.5)
        assert view["kind"] == "consolidate" and view["actor"] == "ops"
        assert view["total"] >= view["done"] > 0 and view["detail"]["progress"].endswith("steps")

        assert (await viewer.post(f"/api/consolidations/{job}/cancel")).status_code == 403
        cancelled = await http.post(f"/api/consolidations/{job}/cancel", json={"reason": "wrong data"})
        assert cancelled.status_code == 200, cancelled.text
        ended = cancelled.json()
        assert ended["state"] == "cancelled" and ended["detail"]["outcome"] == "wrong data"
        assert any("stopped; progress is saved" in line for line in ended["detail"]["log"]), ended["detail"]["log"]
        assert (await http.post(f"/api/consolidations/{job}/cancel")).status_code == 409
        assert [j["id"] for j in (await viewer.get("/api/consolidations")).json()["jobs"]] == [job]
    registry = open_registry("", cfg.model_dir)
    try:
        assert [(a.action, a.actor) for a in registry.actions()] == [
            ("cancel consolidation", "console:ops"), ("consolidate", "console:ops")]
    finally:
        registry.close()


async def test_the_rig_watcher_keeps_what_the_servers_metrics_say_per_rig(tmp_path, started, monkeypatch):
    monkeypatch.setattr(rig_watch, "INTERVAL_S", 0.3)
    server = await started(server_config(tmp_path / "models"))
    cfg = with_server(console_config(tmp_path, None), f"127.0.0.1:{server.port}",
                      server_metrics=f"http://127.0.0.1:{server.metrics_port}/metrics")
    vic = add_account(cfg, "vic", "viewer")
    async with running_console(cfg) as url, client(url, vic) as viewer:
        async def rigs() -> dict[str, dict]:
            return {r["rig"]: r for r in (await viewer.get("/api/rigs")).json()["rigs"]}

        async def counted(expected: dict[str, int]) -> dict[str, dict]:
            deadline = time.monotonic() + 30
            while True:
                found = await rigs()
                if {r: v["scans"] for r, v in found.items()} == expected:
                    return found
                assert time.monotonic() < deadline, f"rigs {found} never counted {expected}"
                await asyncio.sleep(0.2)

        await segment(server.port, ["rig-a", "rig-a", "rig-b"], seed=1)
        first = await counted({"rig-a": 2, "rig-b": 1})
        assert first["rig-a"]["doubt"] > 0.9 and first["rig-a"]["version"] == 0  # an untrained model doubts all
        await segment(server.port, ["rig-a", "rig-c"], seed=2)
        found = await counted({"rig-a": 3, "rig-b": 1, "rig-c": 1})
        assert all(r["scans"] > 0 and r["drift_events"] == 0 for r in found.values())
        answer = (await viewer.get("/api/rigs")).json()
        assert answer["server"]["up"] is True and answer["server"]["version"] == 0
        series = (await viewer.get("/api/rigs/rig-a")).json()
        assert sum(s["scans"] for s in series["samples"]) == 3 and len(series["samples"]) >= 2
        assert all(s["doubt"] > 0.9 for s in series["samples"] if s["scans"]) and series["events"] == []
        assert (await viewer.get("/api/rigs/rig-z")).status_code == 404


def test_the_rigs_page_says_what_normalises_each_rig_s_scans():
    """From the server's per-rig gauges: its own statistics, a gain curve, both, or the version's."""
    metrics = ServerMetrics()
    metrics.rig_statistics_scans.labels("adapted").set(40)
    metrics.rig_gain_db.labels("adapted").set(0)
    metrics.rig_statistics_scans.labels("tgc").set(0)
    metrics.rig_gain_db.labels("tgc").set(25.74)
    metrics.rig_statistics_scans.labels("both").set(12)
    metrics.rig_gain_db.labels("both").set(24.46)
    metrics.rig_statistics_scans.labels("kept").set(0)
    metrics.rig_gain_db.labels("kept").set(0)
    metrics.drift_score.labels("new").set(1.0)
    reading = rig_watch.parse(generate_latest(metrics.registry).decode())
    said = {rig: r.normalisation() for rig, r in reading.rigs.items()}
    assert said == {"adapted": "own statistics, 40 scans", "tgc": "gain curve, 25.7 dB",
                    "both": "own statistics, 12 scans, after a gain curve of 24.5 dB", "kept": "version's statistics",
                    "new": None}


async def test_a_server_that_does_not_answer_is_shown_down(tmp_path, monkeypatch):
    monkeypatch.setattr(rig_watch, "INTERVAL_S", 0.2)
    cfg = with_server(console_config(tmp_path, None), "127.0.0.1:1",
                      server_metrics=f"http://127.0.0.1:{free_port()}/metrics")
    vic = add_account(cfg, "vic", "viewer")
    async with running_console(cfg) as url, client(url, vic) as viewer:
        deadline = time.monotonic() + 10
        while (answer := (await viewer.get("/api/rigs")).json())["server"]["up"] is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert answer["server"]["up"] is False and "refused" in answer["server"]["error"].lower()
        assert answer["rigs"] == []


def test_the_default_metrics_address_is_the_servers_host_on_the_metrics_port(tmp_path):
    cfg = with_server(console_config(tmp_path, None), "inspect-7.plant:8001")
    assert rig_watch.metrics_url(cfg) == "http://inspect-7.plant:8002/metrics"
    assert rig_watch.metrics_url(with_server(cfg, "[::1]:8001")) == "http://[::1]:8002/metrics"


@pytest.mark.parametrize("line, progress", [
    ("consolidate joint:  40%|####      | 4/10 [00:01<00:02,  3.20step/s]", (4, 10)),
    ("2026-01-01 INFO weldstream.learner.progress: consolidate ewc: 12/40 steps", (12, 40)),
    ("2026-01-01 INFO weldstream.learner.consolidation: consolidation joint: unit 1/2 (epoch 1) done", None),
])
def test_progress_is_read_from_the_bar_or_the_log_not_from_units(line, progress):
    from weldstream.console.consolidation_jobs import PROGRESS

    found = PROGRESS.search(line)
    assert (None if found is None else (int(found.group(1)), int(found.group(2)))) == progress
