"""Hot swap under load: 20+ new versions while a client keeps calling; no request may fail, and every
response must be what the version it names computes for that scan (a module served while its weights
were half copied would answer with a mask no version computes)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import torch

from weldstream.codec import array_to_tensor
from weldstream.errors import CorruptVersion
from weldstream.model import ModelConfig, build_model
from weldstream.server.app import InferenceServer
from weldstream.server.inference import predict_batch
from weldstream.server.loader import load_version
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WEIGHTS_FILE, WeightStore

from .conftest import server_config

SWAPS = 22


async def test_no_request_fails_across_many_swaps(tmp_path):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    server = InferenceServer(server_config(model_dir, poll_interval_s=60))
    await server.start()
    image = (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)
    request = segmenter_pb2.SegmentRequest(scan_id="s", image=tensor_pb2.Image(tensor=array_to_tensor(image)))
    expected = {0: predict_batch(server.slot.current(), [image])[0].mask.tobytes()}  # before any swap reuses it
    answers: list[tuple[int, bytes]] = []
    modules_served: set[int] = set()
    failures: list[BaseException] = []
    done = asyncio.Event()

    async def client() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            while not done.is_set():
                try:
                    response = await stub.Segment(request)
                    answers.append((response.model_version, response.mask.data))
                except grpc.aio.AioRpcError as err:
                    failures.append(err)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    try:
        for version in range(1, SWAPS + 1):
            state = build_model(ModelConfig(), seed=version).state_dict()
            await asyncio.to_thread(store.publish, state, ModelConfig(), parent_version=version - 1)
            assert await server.swapper.swap_to_served()
            assert server.slot.current().version == version
            modules_served.add(id(server.slot.current().module))
            await asyncio.sleep(0.05)
        # The clients' calls in flight at the last swap ran on the version they had leased; wait for one that
        # started after it (a busy machine may answer none within a fixed pause; 120 s only guards a hang).
        async with asyncio.timeout(120):
            while not any(version == SWAPS for version, _ in answers):
                await asyncio.sleep(0.01)
    finally:
        done.set()
        await asyncio.gather(*clients)
        await server.stop()
    assert not failures
    versions_seen = {version for version, _ in answers}
    assert len(versions_seen) >= SWAPS // 2  # responses really came from many versions
    assert max(versions_seen) == SWAPS
    for version in versions_seen - {0}:
        loaded = load_version(store, version, torch.device("cpu"))
        expected[version] = predict_batch(loaded, [image])[0].mask.tobytes()
    assert len(set(expected.values())) == len(expected)  # the versions really disagree on this scan
    wrong = [(version, i) for i, (version, mask) in enumerate(answers) if mask != expected[version]]
    assert not wrong, f"{len(wrong)} of {len(answers)} responses differ from their named version's mask"
    swapped = server.metrics.swaps.labels("swapped")._value.get()
    assert swapped == SWAPS
    assert len(modules_served) == 2  # every version went into the module the previous swap retired


def _publish_nan_weights(store: WeightStore) -> None:
    state = build_model(ModelConfig(), seed=2).state_dict()
    state = {name: torch.full_like(t, float("nan")) if t.is_floating_point() else t for name, t in state.items()}
    store.publish(state, ModelConfig(), parent_version=1)


def _publish_corrupt_bytes(store: WeightStore) -> None:
    store.publish(build_model(ModelConfig(), seed=2).state_dict(), ModelConfig(), parent_version=1)
    weights = store.path_of(2) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100] + b"\0" * 100)
    with pytest.raises(CorruptVersion):
        store.load(2)


@pytest.mark.parametrize("publish_bad_version", [_publish_corrupt_bytes, _publish_nan_weights])
async def test_a_bad_version_is_refused_and_the_live_one_keeps_serving(tmp_path, publish_bad_version):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    store.publish(build_model(ModelConfig(), seed=1).state_dict(), ModelConfig(), parent_version=0)
    server = InferenceServer(server_config(model_dir, poll_interval_s=60))
    await server.start()
    try:
        publish_bad_version(store)
        assert not await server.swapper.swap_to_served()
        assert server.slot.current().version == 1
        assert server.metrics.swaps.labels("failed")._value.get() == 1
        assert all(torch.isfinite(p).all() for p in server.slot.current().module.parameters())
        store.publish(build_model(ModelConfig(), seed=3).state_dict(), ModelConfig(), parent_version=1)
        assert await server.swapper.swap_to_served()  # the spare the failed load used is still usable
        assert server.slot.current().version == 3
        assert all(torch.isfinite(p).all() for p in server.slot.current().module.parameters())
    finally:
        await server.stop()
