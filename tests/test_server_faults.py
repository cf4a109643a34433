"""Server faults found by reading the code, each reproduced on a real server: limits that disagree,
memory bounded by request count, statuses counted wrongly, readiness of an untrained model, class names
from the wrong version, transient load errors treated as corruption."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from weldstream.codec import array_to_tensor
from weldstream.errors import Overloaded
from weldstream.kserve import grpc_predict_v2_pb2 as kserve
from weldstream.kserve import grpc_predict_v2_pb2_grpc as kserve_grpc
from weldstream.model import ModelConfig, build_model
from weldstream.server import batcher as batcher_module
from weldstream.server import swapper as swapper_module
from weldstream.server.app import InferenceServer
from weldstream.server.batcher import Batcher
from weldstream.server.config import ServerConfig
from weldstream.server.errors import DeadlineExpired
from weldstream.server.loader import fresh_model
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import ModelSlot
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WEIGHTS_FILE, WeightStore

from .conftest import server_config


def raw_request(array: np.ndarray, scan_id: str = "s", confidence: bool = False) -> segmenter_pb2.SegmentRequest:
    return segmenter_pb2.SegmentRequest(scan_id=scan_id, image=tensor_pb2.Image(tensor=array_to_tensor(array)),
                                        return_confidence=confidence)


def count(server: InferenceServer, method: str, code: str) -> float:
    return server.metrics.requests.labels(method, code)._value.get()


async def counted(server: InferenceServer, method: str, code: str, timeout_s: float = 5.0) -> float:
    """The count once the call's done-callback has run (it may run just after the client has its answer)."""
    deadline = time.monotonic() + timeout_s
    while not count(server, method, code) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return count(server, method, code)


def publish(store: WeightStore, seed: int, config: ModelConfig | None = None) -> None:
    config = config or ModelConfig()
    store.publish(build_model(config, seed=seed).state_dict(), config, parent_version=(store.latest() or 0))


async def test_largest_scan_with_its_confidence_fits_the_send_limit(tmp_path, started):
    server = await started(server_config(tmp_path / "models", max_side=1024))
    image = np.zeros((1024, 1024), np.uint8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                         options=[("grpc.max_receive_message_length", -1)]) as channel:
        response = await segmenter_pb2_grpc.SegmenterStub(channel).Segment(raw_request(image, confidence=True))
        assert list(response.confidence.shape) == [1024, 1024]
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        tensor = kserve.ModelInferRequest.InferInputTensor(name="scan", datatype="UINT8", shape=[1, 1, 1024, 1024])
        request = kserve.ModelInferRequest(model_name="weld-seg", inputs=[tensor],
                                           raw_input_contents=[image.tobytes()])
        both = await stub.ModelInfer(request)
        assert [o.name for o in both.outputs] == ["mask", "confidence", "doubt"]
        request.outputs.add(name="mask")
        only_mask = await stub.ModelInfer(request)
        assert [o.name for o in only_mask.outputs] == ["mask"] and len(only_mask.raw_output_contents) == 1
        # a UINT8 batch of 4 max-size scans is within the receive limit, but its answer would not be
        tensor.shape[:] = [4, 1, 1024, 1024]
        big = kserve.ModelInferRequest(model_name="weld-seg", inputs=[tensor],
                                       raw_input_contents=[np.zeros((4, 1024, 1024), np.uint8).tobytes()])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(big)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pixels" in err.value.details()


class SlowForward:
    """predict_batch that takes `seconds` and records what each forward pass was given."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[list[tuple[int, ...]]] = []

    def __call__(self, loaded, scans, with_regions=True, statistics=None):
        self.batches.append([s.shape for s in scans])
        time.sleep(self.seconds)
        return batcher_module.predict_batch_unpatched(loaded, scans, with_regions, statistics)


@pytest.fixture
def slow_forward(monkeypatch):
    forward = SlowForward(0.3)
    monkeypatch.setattr(batcher_module, "predict_batch_unpatched", batcher_module.predict_batch, raising=False)
    monkeypatch.setattr(batcher_module, "predict_batch", forward)
    return forward


def make_batcher(**limits) -> Batcher:
    config = ModelConfig()
    slot = ModelSlot(fresh_model(config, torch.device("cpu")))
    base = dict(max_batch_size=8, max_queue_delay_s=0.01, max_queue=64, max_batch_pixels=1 << 20,
                max_queue_pixels=1 << 22)
    base.update(limits)
    return Batcher(slot, ServerMetrics(), **base)


async def test_queue_is_bounded_by_pixels_and_refuses_at_once(slow_forward):
    batcher = make_batcher(max_queue_pixels=3 * 256 * 256, max_batch_pixels=256 * 256)
    batcher.start()
    try:
        first = [asyncio.create_task(batcher.submit(np.zeros((256, 256), np.uint8))) for _ in range(3)]
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        with pytest.raises(Overloaded):
            await batcher.submit(np.zeros((64, 64), np.uint8))
        assert time.perf_counter() - started < 0.05  # refused at once, not after waiting for room
        await asyncio.gather(*first)
        await batcher.submit(np.zeros((64, 64), np.uint8))  # room again once answered
    finally:
        await batcher.close()


async def test_batches_are_bounded_by_pixels(slow_forward):
    batcher = make_batcher(max_batch_pixels=2 * 128 * 128)
    batcher.start()
    try:
        blocker = asyncio.create_task(batcher.submit(np.zeros((32, 32), np.uint8)))
        await asyncio.sleep(0.05)
        await asyncio.gather(blocker, *(batcher.submit(np.zeros((128, 128), np.uint8)) for _ in range(6)))
    finally:
        await batcher.close()
    assert [len(b) for b in slow_forward.batches] == [1, 2, 2, 2]


async def test_a_request_whose_deadline_passed_is_dropped_before_its_forward_pass(slow_forward):
    batcher = make_batcher()
    batcher.start()
    try:
        blocker = asyncio.create_task(batcher.submit(np.zeros((32, 32), np.uint8)))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExpired):
            await batcher.submit(np.zeros((48, 48), np.uint8), deadline=time.monotonic() + 0.1)
        await blocker
    finally:
        await batcher.close()
    assert (48, 48) not in [shape for batch in slow_forward.batches for shape in batch]


async def test_scans_of_one_request_share_one_forward_pass_and_version(slow_forward):
    batcher = make_batcher(max_batch_size=2)
    batcher.start()
    try:
        predictions = await batcher.submit_many([np.zeros((32, 32), np.uint8)] * 3)
    finally:
        await batcher.close()
    assert [len(b) for b in slow_forward.batches] == [3]
    assert {p.version for p in predictions} == {0}


async def test_a_cancelled_call_is_not_counted_ok(tmp_path, started, slow_forward):
    server = await started(server_config(tmp_path / "models"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = segmenter_pb2_grpc.SegmenterStub(channel).Segment(raw_request(np.zeros((32, 32), np.uint8)))
        await asyncio.sleep(0.1)
        call.cancel()
        await asyncio.sleep(0.5)
    assert await counted(server, "Segment", "CANCELLED") == 1
    assert count(server, "Segment", "OK") == 0


async def test_a_response_over_the_send_limit_is_not_counted_ok(tmp_path, started, monkeypatch):
    monkeypatch.setattr(ServerConfig, "max_send_bytes", property(lambda self: 4096))
    server = await started(server_config(tmp_path / "models"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await segmenter_pb2_grpc.SegmenterStub(channel).Segment(
                raw_request(np.zeros((64, 64), np.uint8), confidence=True))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await counted(server, "Segment", "RESOURCE_EXHAUSTED") == 1
    assert count(server, "Segment", "OK") == 0


async def test_ready_when_trained_waits_for_a_trained_version(tmp_path, started):
    store = WeightStore(tmp_path / "models")
    server = await started(server_config(tmp_path / "models", ready_when_trained=True, poll_interval_s=60))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        kserve_stub = kserve_grpc.GRPCInferenceServiceStub(channel)

        async def ready() -> tuple[int, bool]:
            status = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
            model = (await kserve_stub.ModelReady(kserve.ModelReadyRequest(name="weld-seg"))).ready
            return status, model

        assert await ready() == (health_pb2.HealthCheckResponse.NOT_SERVING, False)
        alive = await health.Check(health_pb2.HealthCheckRequest(service="weldstream.liveness"))
        assert alive.status == health_pb2.HealthCheckResponse.SERVING  # what a liveness probe asks
        publish(store, seed=1)
        assert await server.swapper.swap_to_served()
        assert await ready() == (health_pb2.HealthCheckResponse.SERVING, True)


async def test_untrained_version_is_ready_without_the_option(tmp_path, started):
    server = await started(server_config(tmp_path / "models"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.ModelReady(kserve.ModelReadyRequest(name="weld-seg"))
    assert reply.ready


async def test_class_names_come_from_the_version_that_made_the_mask(tmp_path, started, monkeypatch):
    store = WeightStore(tmp_path / "models")
    first = ModelConfig(classes=("background", "crack-v1", "porosity-v1", "lack-of-fusion-v1", "inclusion-v1"))
    second = ModelConfig(classes=("background", "crack-v2", "porosity-v2", "lack-of-fusion-v2", "inclusion-v2"))
    publish(store, seed=1, config=first)
    server = await started(server_config(tmp_path / "models", poll_interval_s=60))
    publish(store, seed=2, config=second)
    submit = server.batcher.submit_many

    async def swap_right_after_the_forward(scans, deadline=None, regions=True, rig=""):
        predictions = await submit(scans, deadline, regions, rig)
        assert await server.swapper.swap_to_served()  # a swap between the prediction and the response
        return predictions

    monkeypatch.setattr(server.batcher, "submit_many", swap_right_after_the_forward)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await segmenter_pb2_grpc.SegmenterStub(channel).Segment(
            raw_request(np.zeros((64, 64), np.uint8)))
    assert response.model_version == 1
    assert [c.class_name for c in response.class_fractions][1:] == list(first.classes[1:])


async def test_a_transient_load_error_is_retried_and_only_corrupt_versions_are_refused(tmp_path, started,
                                                                                      monkeypatch):
    store = WeightStore(tmp_path / "models")
    publish(store, seed=1)
    server = await started(server_config(tmp_path / "models", poll_interval_s=60))
    publish(store, seed=2)
    weights = store.path_of(2) / WEIGHTS_FILE
    payload = weights.read_bytes()
    weights.unlink()  # not there yet (a copy still on its way)
    assert not await server.swapper.swap_to_served()
    weights.write_bytes(payload)
    assert await server.swapper.swap_to_served() and server.slot.current().version == 2

    publish(store, seed=3)
    load = swapper_module.load_version
    calls = []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return load(*args, **kwargs)

    monkeypatch.setattr(swapper_module, "load_version", out_of_memory_once)
    assert not await server.swapper.swap_to_served()
    assert await server.swapper.swap_to_served() and server.slot.current().version == 3
    assert server.metrics.swaps.labels("retry")._value.get() == 2
    assert server.metrics.swaps.labels("failed")._value.get() == 0


async def test_versions_behind_gauge_counts_versions_not_yet_served(tmp_path, started):
    store = WeightStore(tmp_path / "models")
    publish(store, seed=1)
    server = await started(server_config(tmp_path / "models", poll_interval_s=60))
    behind = server.metrics.versions_behind
    assert behind._value.get() == 0
    publish(store, seed=2)
    (store.path_of(2) / WEIGHTS_FILE).write_bytes(b"damaged")
    assert not await server.swapper.swap_to_served()
    assert behind._value.get() == 1
    publish(store, seed=3)
    assert await server.swapper.swap_to_served()
    assert behind._value.get() == 0
