"""bench serve's measurement plumbing: rows taken in turns, and the report written as Markdown and JSON."""

from __future__ import annotations

import json

import torch

from weldstream.bench.serving import interleaved
from weldstream.bench.serving_report import format_table, write_report


def test_rows_are_timed_in_turns_of_a_block_each():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    times = interleaved(calls, count=5, device=torch.device("cpu"), block=2)
    assert {name: len(values) for name, values in times.items()} == {"a": 5, "b": 5}
    timed = order[10:]  # after five warm-up calls of each
    assert timed == ["a", "a", "b", "b", "a", "a", "b", "b", "a", "b"]


def test_the_report_holds_the_ratios_and_the_raw_figures(tmp_path):
    p50 = {"eager_fp32_forward": 40.0, "backend_forward": 20.0, "pipeline_mask_only": 21.0,
           "pipeline_with_regions": 24.0, "grpc_segment": 26.0, "grpc_segment_with_regions": 30.0,
           "kserve_model_infer_fp32": 28.0}
    result = {
        "config": {"size": [256, 256], "device_name": "cpu", "threads": 2, "served_backend": "onnxruntime",
                   "backend": "onnxruntime", "backend_asked": "auto",
                   "auto_timings_ms": {"torchscript": 30.0, "onnxruntime": 20.0, "torch": 40.0},
                   "torch": torch.__version__, "load_average": [1.0, 1.0, 1.0], "cpu_count": 2, "requests": 10,
                   "clients": 4},
        "p50_ms": p50, "p99_ms": {k: 2 * v for k, v in p50.items()},
        "ratios": {"grpc_over_eager_fp32_forward": 0.65, "kserve_fp32_over_eager_fp32_forward": 0.7,
                   "grpc_with_regions_over_eager_fp32_forward": 0.75,
                   "grpc_over_pipeline": 1.25, "around_forward_share_mask_only": 1 / 21,
                   "around_forward_share_with_regions": 4 / 24, "batching_gain": 1.5},
        "throughput_rps": {"batching_on": 30.0, "batching_off": 20.0},
        "backend_build": {"total_s": 4.25, "export_s": 3.5},
    }
    write_report(result, tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| gRPC Segment ÷ eager fp32 forward | 0.65× | ≤ 1.0 on CPU |" in table
    assert "| KServe ModelInfer (FP32) ÷ eager fp32 forward | 0.70× | ≤ 0.85 on CPU |" in table
    assert "backend onnxruntime (auto, the server's default: the fastest here)" in table.splitlines()[0]
    assert "torchscript 30.0, onnxruntime 20.0, torch 40.0" in table
    assert "4.2 s (the ONNX export 3.5 s of it)" in table
    assert "| eager fp32 forward, by hand (build_model, eval, inference_mode) | 40.0 | 80.0 |" in table
    assert "**1.50×**" in table and table == format_table(result)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == result


def test_a_rig_is_adapted_before_its_row_is_timed_and_the_version_path_stays_the_version(tmp_path):
    """The rig row must time the path an adapted rig takes (its own statistics), not the version's: adapt_rig
    sends the rig's scans until the server says so; a request without a rig id is still the version's."""
    import grpc

    from weldstream.bench.serving import (
        ADAPTED_RIG,
        ServeBench,
        ServerProcess,
        _request,
        adapt_rig,
        publish_rig_ready_version,
    )
    from weldstream.v1 import segmenter_pb2_grpc
    from weldstream.weight_store import WeightStore

    cfg = ServeBench(size=(64, 64), threads=1, backend="onnxruntime")
    model_dir = tmp_path / "models"
    publish_rig_ready_version(WeightStore(model_dir), cfg.size)
    with ServerProcess(model_dir, cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        own = _request(cfg.size, rig=ADAPTED_RIG)
        assert stub.Segment(own).normalisation.source == "version"  # a new rig starts on the version's
        calls = adapt_rig(stub, own)
        assert 1 < calls <= 400
        reply = stub.Segment(own)
        assert (reply.normalisation.source, reply.model_version) == ("rig", 1) and reply.normalisation.scans > 1
        assert stub.Segment(_request(cfg.size)).normalisation.source == "version"
