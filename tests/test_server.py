"""A real server on a loopback port, called with the real native stub, health client and reflection."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from weldstream.codec import array_to_tensor, encode_png, encode_tiff, tensor_to_array
from weldstream.kserve import grpc_predict_v2_pb2 as kserve
from weldstream.kserve import grpc_predict_v2_pb2_grpc as kserve_grpc
from weldstream.model import ModelConfig, build_model
from weldstream.server.app import InferenceServer
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

from .conftest import server_config

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def channel_for(server: InferenceServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")


def raw_request(array: np.ndarray, scan_id: str = "s") -> segmenter_pb2.SegmentRequest:
    return segmenter_pb2.SegmentRequest(scan_id=scan_id, image=tensor_pb2.Image(tensor=array_to_tensor(array)))


def scan(shape=(96, 128), dtype=np.uint16, seed=0) -> np.ndarray:
    values = np.random.default_rng(seed).random(shape) * (255 if dtype == np.uint8 else 4095)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
async def test_segment_raw_tensor_returns_mask_at_input_size(server, dtype):
    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        response = await stub.Segment(raw_request(scan((77, 131), dtype), "rig-1/0001"))
    mask = tensor_to_array(response.mask, "mask")
    assert response.scan_id == "rig-1/0001"
    assert mask.shape == (77, 131) and mask.dtype == np.uint8
    assert response.model_version == 0
    assert len(response.class_fractions) == 5
    assert abs(sum(c.fraction for c in response.class_fractions) - 1) < 1e-6
    assert response.server_latency_ms > 0
    for region in response.regions:
        assert region.class_id > 0 and region.area_px > 0
        assert region.bbox.x + region.bbox.width <= 131 and region.bbox.y + region.bbox.height <= 77
        assert 0 < region.mean_confidence <= 1
        assert region.area_px >= 4  # specks are not reported
    assert sum(r.area_px for r in response.regions) <= int((mask > 0).sum())


@pytest.mark.parametrize("encoder", ["png", "tiff"])
async def test_segment_encoded_file(server, encoder):
    image = scan((64, 80), np.uint16)
    data = encode_png(image) if encoder == "png" else encode_tiff(image)
    request = segmenter_pb2.SegmentRequest(
        scan_id="enc", image=tensor_pb2.Image(encoded=tensor_pb2.EncodedImage(data=data)), return_confidence=True)
    async with channel_for(server) as channel:
        response = await segmenter_pb2_grpc.SegmenterStub(channel).Segment(request)
    assert tensor_to_array(response.mask, "mask").shape == (64, 80)
    confidence = tensor_to_array(response.confidence, "confidence")
    assert confidence.shape == (64, 80) and confidence.dtype == np.float32 and (confidence >= 0.2).all()


def bad_requests() -> list[tuple[str, segmenter_pb2.SegmentRequest, str]]:
    good = array_to_tensor(scan((32, 32), np.uint16))
    short = tensor_pb2.Tensor(dtype=good.dtype, shape=good.shape, data=good.data[:-2])
    nan = np.zeros((32, 32), np.float32)
    nan[3, 4] = np.nan
    inf = np.ones((32, 32), np.float32)
    inf[0, 0] = np.inf
    encoded = tensor_pb2.EncodedImage(format="png", data=b"\x89PNG\r\n\x1a\n garbage")

    def req(**image):
        return segmenter_pb2.SegmentRequest(scan_id="bad", image=tensor_pb2.Image(**image))

    return [
        ("dtype vs bytes", req(tensor=short), "image.tensor.data"),
        ("empty dims", req(tensor=tensor_pb2.Tensor(dtype=tensor_pb2.UINT8, shape=[0, 32])), "image.tensor.shape"),
        ("no dims", req(tensor=tensor_pb2.Tensor(dtype=tensor_pb2.UINT8)), "image.tensor.shape"),
        ("no dtype", req(tensor=tensor_pb2.Tensor(shape=[1, 1], data=b"\0")), "image.tensor.dtype"),
        ("oversized", req(tensor=array_to_tensor(np.zeros((8, 1025), np.uint8))), "image.shape"),
        ("NaN", req(tensor=array_to_tensor(nan)), "image.data"),
        ("Inf", req(tensor=array_to_tensor(inf)), "image.data"),
        ("3 channels", req(tensor=array_to_tensor(np.zeros((3, 8, 8), np.uint8))), "image.shape"),
        ("4-D", req(tensor=array_to_tensor(np.zeros((1, 1, 4, 4), np.uint8))), "image.shape"),
        ("undecodable", req(encoded=encoded), "image.encoded.data"),
        ("missing image", segmenter_pb2.SegmentRequest(scan_id="bad"), "image"),
    ]


async def test_malformed_requests_get_invalid_argument_and_the_server_stays_up(server):
    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        for case, request, field in bad_requests():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Segment(request)
            assert err.value.code() == INVALID, case
            assert err.value.details().startswith(field), (case, err.value.details())
        response = await stub.Segment(raw_request(scan()))
        assert tensor_to_array(response.mask, "mask").shape == (96, 128)
    await asyncio.sleep(0.2)  # a call is counted once it is done, just after the client has its answer
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    assert f'inference_requests_total{{code="INVALID_ARGUMENT",method="Segment"}} {len(bad_requests())}.0' in text
    assert 'inference_requests_total{code="OK",method="Segment"} 1.0' in text
    assert "inference_model_untrained 1.0" in text


async def test_stream_answers_in_order_and_reports_bad_frames_in_band(server):
    frames = [raw_request(scan(seed=i), f"f{i}") for i in range(5)]
    frames[2] = bad_requests()[0][1]
    frames[2].scan_id = "f2"

    async def requests():
        for frame in frames:
            yield frame

    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        responses = [r async for r in stub.SegmentStream(requests())]
    assert [r.scan_id for r in responses] == [f"f{i}" for i in range(5)]
    assert responses[2].error.code == "INVALID_ARGUMENT" and "image.tensor.data" in responses[2].error.message
    for i in (0, 1, 3, 4):
        assert not responses[i].error.code
        assert tensor_to_array(responses[i].mask, "mask").shape == (96, 128)


async def test_get_model_reports_untrained_version_zero(server):
    async with channel_for(server) as channel:
        info = await segmenter_pb2_grpc.SegmenterStub(channel).GetModel(segmenter_pb2.GetModelRequest())
    assert info.version == 0 and info.untrained
    assert list(info.classes) == ["background", "crack", "porosity", "lack_of_fusion", "inclusion"]
    assert info.input_spec.stride == 32 and info.input_spec.max_height == 1024
    assert info.encoder == "mobilenet_v2"


async def test_server_starts_from_the_newest_stored_version(tmp_path):
    store = WeightStore(tmp_path / "models")
    state = build_model(ModelConfig(), seed=7).state_dict()
    store.publish(state, ModelConfig(), parent_version=0)
    manifest = store.publish(state, ModelConfig(), parent_version=1, strategy="gem",
                             offsets=[{"topic": "weld.scans.labeled", "partition": 0, "offset": 42}],
                             scores={"ut-a": {"miou": 0.61, "dice": 0.7, "samples": 20}})
    server = InferenceServer(server_config(tmp_path / "models"))
    await server.start()
    try:
        async with channel_for(server) as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            info = await stub.GetModel(segmenter_pb2.GetModelRequest())
            response = await stub.Segment(raw_request(scan()))
    finally:
        await server.stop()
    assert info.version == 2 and not info.untrained and info.sha256 == manifest.sha256
    assert info.lineage.parent_version == 1 and info.lineage.strategy == "gem"
    assert info.lineage.offsets[0].offset == 42
    assert info.lineage.scores[0].domain == "ut-a" and abs(info.lineage.scores[0].miou - 0.61) < 1e-9
    assert response.model_version == 2


async def test_concurrent_requests_are_batched_and_match_unbatched_results(server):
    scans = [scan(seed=i) for i in range(24)]
    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        together = await asyncio.gather(*(stub.Segment(raw_request(s)) for s in scans))
        alone = [await stub.Segment(raw_request(s)) for s in scans[:4]]
    for a, b in zip(alone, together[:4], strict=True):
        assert a.mask.data == b.mask.data
    sizes = server.metrics.batch_size.collect()[0].samples
    total = next(s.value for s in sizes if s.name == "inference_batch_size_sum")
    count = next(s.value for s in sizes if s.name == "inference_batch_size_count")
    assert total == 28 and count < 28  # some forward passes carried more than one scan


async def test_health_and_reflection(server):
    async with channel_for(server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "weldstream.v1.Segmenter", "inference.GRPCInferenceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        replies = [r async for r in stub.ServerReflectionInfo(ask())]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"weldstream.v1.Segmenter", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


async def test_kserve_infer_with_typed_contents_and_bad_model_name(server):
    image = scan((2, 1, 40, 48), np.uint8)
    tensor = kserve.ModelInferRequest.InferInputTensor(name="scan", datatype="UINT8", shape=[2, 1, 40, 48])
    tensor.contents.uint_contents.extend(image.reshape(-1).tolist())
    async with channel_for(server) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.ModelInfer(kserve.ModelInferRequest(model_name="weld-seg", inputs=[tensor]))
        assert [o.name for o in reply.outputs] == ["mask", "confidence", "doubt"]
        assert list(reply.outputs[0].shape) == [2, 40, 48] and reply.model_version == "0"
        assert list(reply.outputs[2].shape) == [2] and reply.outputs[2].datatype == "FP32"
        doubt = np.frombuffer(reply.raw_output_contents[2], "<f4")
        assert ((doubt > 0.5) & (doubt <= 1)).all()  # the untrained version 0 doubts everything
        mask = np.frombuffer(reply.raw_output_contents[0], np.uint8).reshape(2, 40, 48)
        assert mask.max() < 5
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(kserve.ModelInferRequest(model_name="other", inputs=[tensor]))
        assert err.value.code() == INVALID and err.value.details().startswith("model_name")
        bad = kserve.ModelInferRequest(model_name="weld-seg", inputs=[tensor], raw_input_contents=[b"\0" * 10])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(bad)
        assert err.value.code() == INVALID and err.value.details().startswith("raw_input_contents[0]")
        wrong_dtype = kserve.ModelInferRequest.InferInputTensor(name="scan", datatype="INT64", shape=[1, 4, 4])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(kserve.ModelInferRequest(model_name="weld-seg", inputs=[wrong_dtype]))
        assert err.value.details().startswith("inputs[scan].datatype")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelMetadata(kserve.ModelMetadataRequest(name="other"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_graceful_shutdown_finishes_in_flight_requests(tmp_path):
    server = InferenceServer(server_config(tmp_path / "m"))
    await server.start()
    channel = channel_for(server)
    stub = segmenter_pb2_grpc.SegmenterStub(channel)
    calls = [asyncio.ensure_future(stub.Segment(raw_request(scan((256, 256), seed=i)))) for i in range(6)]

    def reached_the_server() -> float:
        sample = server.metrics.registry.get_sample_value
        return (sample("inference_inflight_requests") or 0) + (
            sample("inference_requests_total", {"method": "Segment", "code": "OK"}) or 0)

    # Stop only once every call is in flight: a call still being connected when the server stops is
    # refused (GOAWAY), as it should be, and is not what this test is about.
    deadline = time.monotonic() + 30
    while reached_the_server() < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    await server.stop()
    results = await asyncio.gather(*calls, return_exceptions=True)
    await channel.close()
    assert all(isinstance(r, segmenter_pb2.SegmentResponse) for r in results), [
        r for r in results if not isinstance(r, segmenter_pb2.SegmentResponse)]


async def test_a_draining_server_refuses_new_inference_calls_and_still_answers_health(tmp_path):
    """Before grpc closes the connections, new inference calls are refused and the last answer gets a
    moment to be read (grpc's close can reset a connection whose client has not read its answer yet)."""
    server = InferenceServer(server_config(tmp_path / "m"))
    await server.start()
    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        await stub.Segment(raw_request(scan(seed=0)))
        started = time.monotonic()
        left = await server.drain.drain(5.0)
        assert 0.05 < time.monotonic() - started < 1.0 and 4.0 < left < 5.0  # nothing in flight: a short linger
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Segment(raw_request(scan(seed=1)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING  # health is answered (stop() flips it)
    await server.stop()


async def test_stream_frames_are_batched_together_and_stay_in_order(server):
    async def requests():
        for i in range(16):
            yield raw_request(scan(seed=i), f"f{i:02d}")

    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        responses = [r async for r in stub.SegmentStream(requests())]
    assert [r.scan_id for r in responses] == [f"f{i:02d}" for i in range(16)]
    sizes = server.metrics.batch_size.collect()[0].samples
    count = next(s.value for s in sizes if s.name == "inference_batch_size_count")
    assert count < 16  # frames in flight together shared forward passes
