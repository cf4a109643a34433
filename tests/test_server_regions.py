"""SegmentRequest.return_regions: regions only when a request asks for them."""

from __future__ import annotations

import grpc
import numpy as np
import torch

from weldstream.codec import array_to_tensor
from weldstream.model import ModelConfig
from weldstream.server.inference import predict_batch
from weldstream.server.loader import fresh_model
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2


def request(scan: np.ndarray, **flags) -> segmenter_pb2.SegmentRequest:
    return segmenter_pb2.SegmentRequest(scan_id="r", image=tensor_pb2.Image(tensor=array_to_tensor(scan)), **flags)


async def test_regions_only_on_request(server):
    scan = (np.random.default_rng(2).random((96, 128)) * 4095).astype(np.uint16)
    (expected,) = predict_batch(fresh_model(ModelConfig(), torch.device("cpu")), [scan])
    assert expected.regions  # an untrained model's mask has regions to find
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        default = await stub.Segment(request(scan))
        asked = await stub.Segment(request(scan, return_regions=True))
        skipped = await stub.Segment(request(scan, return_regions=False, return_confidence=True))
        [streamed] = [r async for r in stub.SegmentStream(iter([request(scan, return_regions=False)]))]
    wanted = [(r.class_id, r.x, r.y, r.width, r.height, r.area_px) for r in expected.regions]
    got = [(r.class_id, r.bbox.x, r.bbox.y, r.bbox.width, r.bbox.height, r.area_px) for r in asked.regions]
    assert got == wanted
    assert len(default.regions) == len(skipped.regions) == len(streamed.regions) == 0
    assert skipped.mask.data == default.mask.data == expected.mask.tobytes()
    assert [c.fraction for c in skipped.class_fractions] == [c.fraction for c in default.class_fractions]
    assert len(skipped.confidence.data) == 96 * 128 * 4


async def test_return_regions_and_rig_id_work_together(server):
    """Field 4 is return_regions and field 5 rig_id: a rig that skips regions still gets its doubt and drift
    and is counted under its own name; asking for regions gives each its doubt."""
    assert segmenter_pb2.SegmentRequest.DESCRIPTOR.fields_by_name["return_regions"].number == 4
    assert segmenter_pb2.SegmentRequest.DESCRIPTOR.fields_by_name["rig_id"].number == 5
    scan = (np.random.default_rng(3).random((64, 96)) * 4095).astype(np.uint16)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        skipped = await stub.Segment(request(scan, return_regions=False, rig_id="rig-a"))
        asked = await stub.Segment(request(scan, return_regions=True, rig_id="rig-b"))
        [streamed] = [r async for r in stub.SegmentStream(iter([request(scan, return_regions=False, rig_id="rig-c")]))]
    assert len(skipped.regions) == 0 and len(streamed.regions) == 0 and asked.regions
    assert skipped.doubt == streamed.doubt == asked.doubt > 0.9  # an untrained model doubts everything
    assert all(0.9 < r.doubt <= 1 for r in asked.regions)
    def count(name: str, rig: str) -> float:
        return server.metrics.registry.get_sample_value(name, {"rig": rig}) or 0.0

    assert [count("inference_scan_doubt_count", rig) for rig in ("rig-a", "rig-b", "rig-c")] == [1, 1, 1]
    assert count("inference_region_doubt_count", "rig-a") == 0
    assert count("inference_region_doubt_count", "rig-b") == len(asked.regions)
