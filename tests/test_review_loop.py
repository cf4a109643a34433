"""The review loop end to end: a real server publishing to a real broker, read back as a labelling tool would."""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from weldstream.codec import tensor_to_array
from weldstream.kserve import grpc_predict_v2_pb2 as kserve
from weldstream.kserve import grpc_predict_v2_pb2_grpc as kserve_grpc
from weldstream.server.inference import Prediction
from weldstream.server.metrics import ServerMetrics
from weldstream.server.review import ReviewPolicy, ReviewPublisher
from weldstream.topics import REVIEW
from weldstream.v1 import segmenter_pb2_grpc, stream_pb2

from .conftest import server_config
from .test_server import channel_for, raw_request, scan


def counted(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def read_review(bootstrap: str, want: int, quiet_s: float = 2.0, limit_s: float = 30.0) -> list:
    """Everything on the review topic: waits for ``want`` messages, then ``quiet_s`` more for extras."""
    consumer = AIOKafkaConsumer(REVIEW, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    messages: list = []
    try:
        deadline = time.monotonic() + limit_s
        quiet_until = None
        while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                messages += [stream_pb2.ReviewScan.FromString(r.value) for r in records]
            if len(messages) >= want and quiet_until is None:
                quiet_until = time.monotonic() + quiet_s
    finally:
        await consumer.stop()
    return messages


async def test_doubtful_scans_reach_the_review_topic_rate_limited_and_deduplicated(started, broker, tmp_path):
    # An untrained version doubts everything; a bucket of 3 that refills once a minute lets 3 through.
    server = await started(server_config(tmp_path / "models", kafka=broker.bootstrap, max_side=256,
                                         review_rate=1 / 60, review_burst=3))
    first = scan((48, 64), np.uint16, seed=0)
    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        request = raw_request(first, "s0")
        request.rig_id = "rig-field"
        request.return_regions = True
        response = await stub.Segment(request)
        assert response.doubt > 0.9 and response.regions and all(r.doubt > 0.9 for r in response.regions)
        await stub.Segment(request)  # the same scan id again: a duplicate
        await stub.Segment(raw_request(first, "copy"))  # the same pixels under another id: a duplicate
        bad = raw_request(first, "bad")
        bad.image.tensor.shape[:] = [48, 65]  # bytes do not match the shape
        huge = raw_request(scan((300, 64), np.uint8), "huge")  # above --max-side
        for refused in (bad, huge):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Segment(refused)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await stub.Segment(raw_request(scan(seed=1, shape=(48, 64)), "s1"), metadata=(("x-rig-id", "rig-meta"),))
        for i in (2, 3, 4):
            await stub.Segment(raw_request(scan(seed=i, shape=(48, 64)), f"s{i}"))
    messages = await read_review(broker.bootstrap, want=3)
    assert sorted(m.scan_id for m in messages) == ["s0", "s1", "s2"]
    by_id = {m.scan_id: m for m in messages}
    s0 = by_id["s0"]
    assert s0.rig_id == "rig-field" and by_id["s1"].rig_id == "rig-meta" and by_id["s2"].rig_id == ""
    assert np.array_equal(tensor_to_array(s0.image.tensor, "image"), first)
    assert tensor_to_array(s0.mask, "mask").shape == (48, 64)
    assert s0.model_version == 0 and s0.doubt > 0.9 and list(s0.reasons) == ["doubt"]
    assert len(s0.content_sha256) == 64 and s0.regions and s0.regions[0].doubt > 0.9
    # a labelling tool can read it as the LabeledScan it will answer with
    labeled = stream_pb2.LabeledScan.FromString(s0.SerializeToString())
    assert labeled.scan_id == "s0" and labeled.rig_id == "rig-field" and labeled.mask == s0.mask
    metrics = server.metrics
    assert counted(metrics, "inference_review_scans_total", result="sent") == 3
    assert counted(metrics, "inference_review_scans_total", result="duplicate") == 2
    assert counted(metrics, "inference_review_scans_total", result="rate_limited") == 2
    assert counted(metrics, "inference_scan_doubt_count", rig="rig-field") == 2
    assert counted(metrics, "inference_scan_doubt_count", rig="rig-meta") == 1
    assert counted(metrics, "inference_scan_doubt_count", rig="unnamed") == 4  # copy, s2, s3, s4


async def test_kserve_names_its_rig_by_parameter_or_metadata(server):
    tensor = kserve.ModelInferRequest.InferInputTensor(name="scan", datatype="FP32", shape=[1, 32, 32])
    raw = np.random.default_rng(0).random((1, 32, 32)).astype("<f4").tobytes()
    async with channel_for(server) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        request = kserve.ModelInferRequest(model_name="weld-seg", inputs=[tensor], raw_input_contents=[raw])
        request.parameters["rig_id"].string_param = "rig-param"
        reply = await stub.ModelInfer(request)
        assert [o.name for o in reply.outputs] == ["mask", "confidence", "doubt"]
        plain = kserve.ModelInferRequest(model_name="weld-seg", inputs=[tensor], raw_input_contents=[raw],
                                         outputs=[kserve.ModelInferRequest.InferRequestedOutputTensor(name="doubt")])
        reply = await stub.ModelInfer(plain, metadata=(("x-rig-id", "rig-meta"),))
        assert [o.name for o in reply.outputs] == ["doubt"] and list(reply.outputs[0].shape) == [1]
        both = kserve.ModelInferRequest(model_name="weld-seg", inputs=[tensor], raw_input_contents=[raw])
        both.parameters["rig_id"].string_param = "rig-regions"
        both.parameters["regions"].bool_param = True
        reply = await stub.ModelInfer(both)
        assert [o.name for o in reply.outputs] == ["mask", "confidence", "doubt", "regions"]
        regions = json.loads(reply.raw_output_contents[3][4:])
        assert regions and all(0.9 < r["doubt"] <= 1 for r in regions)
    assert counted(server.metrics, "inference_scan_doubt_count", rig="rig-param") == 1
    assert counted(server.metrics, "inference_scan_doubt_count", rig="rig-meta") == 1
    assert counted(server.metrics, "inference_region_doubt_count", rig="rig-regions") == len(regions)


async def test_a_full_review_queue_drops_and_counts_without_waiting():
    metrics = ServerMetrics()
    publisher = ReviewPublisher("127.0.0.1:1", REVIEW, ReviewPolicy(rate=100, burst=100, queue=1), metrics)
    prediction = Prediction(mask=np.zeros((8, 8), np.uint8), confidence=np.ones((8, 8), np.float32),
                            fractions=np.ones(5) / 5, regions=[], version=0, classes=("a",) * 5, doubt=1.0)
    results = [publisher.offer(f"s{i}", "rig", np.full((8, 8), i, np.uint8), prediction, 0.0, ("doubt",))
               for i in range(3)]
    assert results == ["queued", "queue_full", "queue_full"]  # the producer task never started: nothing drains
    assert counted(metrics, "inference_review_scans_total", result="queue_full") == 2
    await publisher.close()


async def test_sampling_lets_a_share_through():
    metrics = ServerMetrics()
    publisher = ReviewPublisher("127.0.0.1:1", REVIEW, ReviewPolicy(rate=1e6, burst=1000, sample=0.25, queue=1000),
                                metrics, seed=0)
    prediction = Prediction(mask=np.zeros((4, 4), np.uint8), confidence=np.ones((4, 4), np.float32),
                            fractions=np.ones(5) / 5, regions=[], version=0, classes=("a",) * 5, doubt=1.0)
    results = [publisher.offer(f"s{i}", "", np.full((4, 4), i, np.uint16), prediction, 0.0, ("doubt",))
               for i in range(400)]
    assert 60 < results.count("queued") < 140
    assert results.count("sampled_out") == 400 - results.count("queued")


async def test_segment_stream_takes_the_rig_from_each_frame_or_the_calls_metadata(server):
    async def frames():
        yield raw_request(scan((32, 32), np.uint8, seed=1), "f1")
        named = raw_request(scan((32, 32), np.uint8, seed=2), "f2")
        named.rig_id = "rig-frame"
        yield named
        too_long = raw_request(scan((32, 32), np.uint8, seed=3), "f3")
        too_long.rig_id = "x" * 200
        yield too_long

    async with channel_for(server) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        answers = [a async for a in stub.SegmentStream(frames(), metadata=(("x-rig-id", "rig-stream"),))]
    assert [a.scan_id for a in answers] == ["f1", "f2", "f3"]
    assert answers[0].doubt > 0.9 and answers[2].error.code == "INVALID_ARGUMENT"
    assert counted(server.metrics, "inference_scan_doubt_count", rig="rig-stream") == 1
    assert counted(server.metrics, "inference_scan_doubt_count", rig="rig-frame") == 1


async def test_the_review_queue_is_bounded_by_pixels_too():
    metrics = ServerMetrics()
    publisher = ReviewPublisher("127.0.0.1:1", REVIEW, ReviewPolicy(rate=100, burst=100, queue=10, queue_pixels=100),
                                metrics)
    prediction = Prediction(mask=np.zeros((8, 8), np.uint8), confidence=np.ones((8, 8), np.float32),
                            fractions=np.ones(5) / 5, regions=[], version=0, classes=("a",) * 5, doubt=1.0)
    results = [publisher.offer(f"s{i}", "rig", np.full((8, 8), i, np.uint8), prediction, 0.0, ("doubt",))
               for i in range(2)]
    assert results == ["queued", "queue_full"]  # 64 pixels wait; 64 more would pass 100
