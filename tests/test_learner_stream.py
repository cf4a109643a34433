"""The learning loop against a real broker and a real server: versions rise, swaps fail nothing."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from weldstream.codec import array_to_tensor
from weldstream.dev.rig import Schedule, produce_stream
from weldstream.learner.ledger import read_ledger
from weldstream.learner.loop import run
from weldstream.registry import open_registry
from weldstream.server.app import InferenceServer
from weldstream.topics import DEAD_LETTER, LABELED_SCANS, ensure_topics
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

from .conftest import learner_config, server_config

DOMAINS = ["ut-pe100-5mhz", "xray-film-steel-x52"]


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_stream_learning_publishes_versions_the_server_swaps_in(broker, tmp_path):
    model_dir = tmp_path / "models"
    server = InferenceServer(server_config(model_dir, kafka=broker.bootstrap, poll_interval_s=30))
    await server.start()
    stop = asyncio.Event()
    learner = asyncio.create_task(run(learner_config(broker.bootstrap, model_dir), stop))
    schedule = Schedule.parse(",".join(f"{d}:24" for d in DOMAINS))
    try:
        await produce_stream(broker.bootstrap, schedule, rate=0, size=(64, 64), seed=1)
        store = WeightStore(model_dir)
        await wait_for(lambda: (store.latest() or 0) >= 2, 120, "two published versions")
        # poll_interval is 30 s: a swap this fast can only come from the Kafka announcement
        await wait_for(lambda: server.slot.current().version >= 2, 20, "the server to hear an announcement")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            image = np.zeros((64, 64), np.uint8)
            response = await stub.Segment(segmenter_pb2.SegmentRequest(
                scan_id="x", image=tensor_pb2.Image(tensor=array_to_tensor(image))))
            info = await stub.GetModel(segmenter_pb2.GetModelRequest())
        assert response.model_version >= 2 and not info.untrained
        assert info.lineage.strategy == "replay-gem" and info.lineage.offsets
        manifest = store.manifest(info.version)
        assert manifest.parent_version == info.version - 1
        assert set(manifest.scores) <= set(DOMAINS) and manifest.scores
        assert all(0 <= s["miou"] <= 1 for s in manifest.scores.values())
    finally:
        stop.set()
        await asyncio.wait_for(learner, 60)
        await server.stop()
    # Both wrote their history to the registry (SQLite in the weight store by default).
    registry = open_registry("", model_dir)
    try:
        assert [v.version for v in registry.versions()] == store.versions()
        promoted = [r for r in registry.rounds() if r.outcome == "promoted"]
        assert {r.version for r in promoted} == set(store.versions())
        assert all(r.trainer == "learner" and r.strategy == "replay-gem" and r.steps > 0 and r.offsets
                   for r in promoted)
        assert sum(r.scans for r in registry.rounds()) > 0
        served = [s.version for s in registry.serving() if s.server == server.name]
        assert served[0] == 0 and served[-1] == server.slot.current().version and served == sorted(served)
    finally:
        registry.close()


async def test_garbage_goes_to_the_dead_letter_topic_and_learning_goes_on(broker, tmp_path):
    model_dir = tmp_path / "models"
    await ensure_topics(broker.bootstrap)
    stop = asyncio.Event()
    learner = asyncio.create_task(run(learner_config(broker.bootstrap, model_dir), stop))
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    await producer.start()
    from weldstream.dev.rig import labeled_scan
    from weldstream.simulator import generate_scan

    wrong_mask = labeled_scan(generate_scan(DOMAINS[0], 5, (64, 64)), "rig")
    wrong_mask.mask.CopyFrom(array_to_tensor(np.zeros((32, 64), np.uint8)))
    garbage = {b"junk-1": b"\xff\x00 definitely not protobuf", b"junk-2": wrong_mask.SerializeToString()}
    try:
        for key, value in garbage.items():
            await producer.send_and_wait(LABELED_SCANS, value, key=key)
        await produce_stream(broker.bootstrap, Schedule.parse(f"{DOMAINS[0]}:24"), rate=0, size=(64, 64), seed=2)
        store = WeightStore(model_dir)
        await wait_for(lambda: (store.latest() or 0) >= 1, 120, "a version learned after the garbage")
    finally:
        stop.set()
        await asyncio.wait_for(learner, 60)
        await producer.stop()

    consumer = AIOKafkaConsumer(DEAD_LETTER, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    try:
        got = {}
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    got[m.key] = (m.value, dict(m.headers))
    finally:
        await consumer.stop()
    assert set(got) == set(garbage)
    for key, (value, headers) in got.items():
        assert value == garbage[key]  # the original bytes, untouched
        assert headers["source.topic"] == LABELED_SCANS.encode()
    assert got[b"junk-1"][1]["field"] == b"message"
    assert got[b"junk-2"][1]["field"] == b"mask.shape"
    assert b"does not match" in got[b"junk-2"][1]["reason"]
    uses = {e.use for e in read_ledger(model_dir)}
    assert uses == {"train", "holdout", "dead_letter"} or uses == {"train", "dead_letter"}
