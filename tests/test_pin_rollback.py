"""An operator pins and rolls back while two server replicas are under load: both follow within seconds
(through weld.models, their store poll is a minute), and no request fails."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from weldstream.announcements import announce_once
from weldstream.codec import array_to_tensor
from weldstream.model import ModelConfig, build_model
from weldstream.pinning import Operator, OperatorConfig
from weldstream.registry import open_registry
from weldstream.server.app import InferenceServer
from weldstream.topics import MODELS, ensure_topics
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

from .conftest import server_config
from .test_learner_stream import wait_for

FOLLOW_S = 10.0


def _publish(store: WeightStore) -> int:
    version = (store.latest() or 0) + 1
    state = build_model(ModelConfig(), seed=version).state_dict()
    return store.publish(state, ModelConfig(), parent_version=version - 1, strategy="replay-gem").version


async def test_two_replicas_follow_a_pin_and_a_rollback_under_load(broker, tmp_path):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    for _ in range(3):
        _publish(store)
    await ensure_topics(broker.bootstrap)
    replicas = [InferenceServer(server_config(model_dir, kafka=broker.bootstrap, poll_interval_s=60,
                                              server_name=f"replica-{i}")) for i in range(2)]
    for replica in replicas:
        await replica.start()
    registry = open_registry("", model_dir)
    operator = Operator(OperatorConfig(model_dir=model_dir, kafka=broker.bootstrap), store, registry, "test")
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    request = segmenter_pb2.SegmentRequest(scan_id="s", image=tensor_pb2.Image(tensor=array_to_tensor(image)))
    seen: dict[str, set[int]] = {r.name: set() for r in replicas}
    failures: list[BaseException] = []
    done = asyncio.Event()

    async def client(replica: InferenceServer) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            while not done.is_set():
                try:
                    seen[replica.name].add((await stub.Segment(request)).model_version)
                except grpc.aio.AioRpcError as err:
                    failures.append(err)

    def serving(version: int) -> bool:
        return all(r.slot.current().version == version for r in replicas)

    async def followed(version: int, what: str) -> float:
        started = time.monotonic()
        await wait_for(lambda: serving(version), FOLLOW_S, what)
        return time.monotonic() - started

    clients = [asyncio.create_task(client(r)) for r in replicas for _ in range(2)]
    try:
        assert serving(3)
        # A new version announced the way the learner announces it: proves both replicas hear weld.models.
        # The followers start reading at the topic's end once they have joined, so announce until both hear.
        four = _publish(store)
        deadline = time.monotonic() + 30
        while not serving(four):
            assert time.monotonic() < deadline, "the replicas never heard an announcement"
            await announce_once(broker.bootstrap, MODELS, store.manifest(four), "publish")
            await asyncio.sleep(1.0)

        await operator.pin(2, reason="audit")
        await followed(2, "both replicas to follow the pin")
        five = _publish(store)  # the learner keeps learning and publishing while the pin holds
        await announce_once(broker.bootstrap, MODELS, store.manifest(five), "publish")
        await asyncio.sleep(1.5)
        assert serving(2), "a pinned replica moved to a newer version"

        await operator.rollback(reason="bad version")  # the parent of the served version 2
        await followed(1, "both replicas to follow the rollback")
        await operator.unpin()
        await followed(five, "both replicas to follow the unpin to the newest version")
    finally:
        done.set()
        await asyncio.gather(*clients)
        for replica in replicas:
            await replica.stop()
    assert not failures, failures[:3]
    for versions in seen.values():
        assert {four, 2, 1, five} <= versions  # each replica really answered from every one of them
    assert [(a.action, a.version, a.previous) for a in registry.actions()] == [
        ("unpin", None, 1), ("rollback", 1, 2), ("pin", 2, four)]
    for replica in replicas:
        spans = [s.version for s in registry.serving() if s.server == replica.name]
        assert spans == [3, four, 2, 1, five]
    registry.close()
