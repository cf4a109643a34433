"""Serving backends: ONNX Runtime and autocast agree with fp32 eager on masks, refusals fall back and are
counted, and the selection logic for CUDA (autocast dtype, batch buckets, graph cache) holds on the CPU."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from weldstream.cli import build_parser
from weldstream.model import ModelConfig
from weldstream.preprocess import pad_to_multiple, window_intensities
from weldstream.server import onnx_backend as onnx_module
from weldstream.server.backend_choice import fastest_backend
from weldstream.server.backends import (
    CPU_CANDIDATES,
    MIN_AGREEMENT,
    Backend,
    BackendSettings,
    agreement,
    autocast_dtype,
    bucket_size,
    eager,
)
from weldstream.server.config import ServerConfig
from weldstream.server.cuda_graphs import GraphCache
from weldstream.server.inference import predict_batch
from weldstream.server.loader import fresh_model, with_backend
from weldstream.settings import config_from_args
from weldstream.simulator import domain_names, generate_scan

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def simulated(count: int = 4, size: tuple[int, int] = (96, 160)) -> list[np.ndarray]:
    names = domain_names()
    return [generate_scan(names[i % len(names)], 100 + i, size).image for i in range(count)]


@pytest.fixture(scope="module")
def eager_and_onnx():
    loaded = fresh_model(ModelConfig(), CPU)
    return loaded, with_backend(loaded, BackendSettings("onnxruntime", threads=2))


def test_onnxruntime_masks_agree_with_eager_on_simulated_scans(eager_and_onnx) -> None:
    loaded, onnx = eager_and_onnx
    assert onnx.runner.name == "onnxruntime" and onnx.backend_refused == ""
    scans = simulated(3) + simulated(2, (77, 201))  # two sizes: dynamic height, width and batch axes
    for ours, reference in zip(predict_batch(onnx, scans), predict_batch(loaded, scans), strict=True):
        assert np.mean(ours.mask == reference.mask) >= MIN_AGREEMENT
        np.testing.assert_allclose(ours.confidence, reference.confidence, atol=1e-3)


def test_onnxruntime_runs_the_server_tiling_of_a_large_scan(eager_and_onnx) -> None:
    from weldstream.tiles import segment

    loaded, onnx = eager_and_onnx
    image = window_intensities(torch.from_numpy(simulated(1, (200, 150))[0])[None, None])
    ours, _ = segment(onnx.runner.predict, image, 32, tile=96, margin=16)
    reference, _ = segment(loaded.module, image, 32, tile=96, margin=16)
    assert ours.shape == (1, 200, 150)
    assert float((ours == reference).float().mean()) >= MIN_AGREEMENT


def test_exporting_leaves_the_served_module_unchanged(eager_and_onnx) -> None:
    loaded, _ = eager_and_onnx
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        before = loaded.module(x)
        onnx_module.export_onnx(loaded.module, loaded.config)
        assert torch.equal(loaded.module(x), before)


def _flipped(backend: Backend) -> Backend:
    def predict(padded: torch.Tensor):
        classes, *rest = backend.predict(padded)
        return ((classes + 1) % 5, *rest)
    return Backend("onnxruntime", predict)


def test_auto_serves_the_fastest_verified_cpu_backend(monkeypatch) -> None:
    assert ServerConfig().backend == "auto"
    module = fresh_model(ModelConfig(), CPU).module
    speeds = {"torchscript": 30.0, "onnxruntime": 20.0, "torch": 40.0}
    timed: list[list[str]] = []

    def timer(predictors, image):
        timed.append(list(predictors))
        return {name: speeds[name] for name in predictors}

    chosen, timings = fastest_backend(module, ModelConfig(), CPU, BackendSettings("auto"), timer=timer)
    assert chosen == "onnxruntime" and timings == speeds and timed == [list(CPU_CANDIDATES)]
    speeds["torchscript"] = 10.0
    assert fastest_backend(module, ModelConfig(), CPU, BackendSettings("auto"), timer=timer)[0] == "torchscript"
    assert fastest_backend(module, ModelConfig(), torch.device("cuda"), BackendSettings("auto"))[0] == "torch"
    assert fastest_backend(module, ModelConfig(), CPU, BackendSettings("torch"))[0] == "torch"


def test_auto_never_chooses_a_backend_whose_masks_disagree(monkeypatch) -> None:
    real = onnx_module.onnx_backend
    monkeypatch.setattr(onnx_module, "onnx_backend", lambda *args, **kwargs: _flipped(real(*args, **kwargs)))
    chosen, timings = fastest_backend(fresh_model(ModelConfig(), CPU).module, ModelConfig(), CPU,
                                      BackendSettings("auto"), timer=lambda found, image: dict.fromkeys(found, 1.0))
    assert "onnxruntime" not in timings and chosen == "torchscript"


def test_torchscript_masks_agree_with_eager_at_any_batch_and_size() -> None:
    loaded = fresh_model(ModelConfig(), CPU)
    frozen = with_backend(loaded, BackendSettings("torchscript"))
    assert frozen.runner.name == "torchscript" and frozen.backend_refused == ""
    scans = simulated(3) + simulated(2, (77, 201))
    for ours, reference in zip(predict_batch(frozen, scans), predict_batch(loaded, scans), strict=True):
        assert np.mean(ours.mask == reference.mask) >= MIN_AGREEMENT  # fp32 both; summation order differs
        np.testing.assert_allclose(ours.confidence, reference.confidence, atol=1e-4)
        assert ours.doubt == pytest.approx(reference.doubt, abs=1e-4)


def test_backend_torch_forces_eager_on_the_cpu(monkeypatch) -> None:
    def exported(*args, **kwargs):
        raise AssertionError("--backend torch must not export")
    monkeypatch.setattr(onnx_module, "export_onnx", exported)
    args = build_parser(["serve", "--backend", "torch"]).parse_args(["serve", "--backend", "torch"])
    settings = config_from_args(ServerConfig, args).backend_settings
    loaded = with_backend(fresh_model(ModelConfig(), CPU), settings)
    assert loaded.runner.name == "torch" and loaded.backend_refused == ""


def test_a_disagreeing_export_is_served_by_eager_torch(monkeypatch) -> None:
    real = onnx_module.onnx_backend
    monkeypatch.setattr(onnx_module, "onnx_backend", lambda *args, **kwargs: _flipped(real(*args, **kwargs)))
    loaded = with_backend(fresh_model(ModelConfig(), CPU), BackendSettings("onnxruntime"))
    assert loaded.runner.name == "torch" and loaded.backend_refused == "disagrees"


def test_a_failing_export_is_served_by_eager_torch(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("exporter says no")
    monkeypatch.setattr(onnx_module, "export_onnx", broken)
    loaded = with_backend(fresh_model(ModelConfig(), CPU), BackendSettings("onnxruntime"))
    assert loaded.runner.name == "torch" and loaded.backend_refused == "failed"


async def test_the_server_counts_a_refused_backend_and_serves_eagerly(tmp_path, started, monkeypatch) -> None:
    import grpc

    from weldstream.codec import array_to_tensor
    from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2

    from .conftest import server_config

    real = onnx_module.onnx_backend
    monkeypatch.setattr(onnx_module, "onnx_backend", lambda *args, **kwargs: _flipped(real(*args, **kwargs)))
    server = await started(server_config(tmp_path / "models", backend="onnxruntime"))
    fallbacks = server.metrics.registry.get_sample_value(
        "inference_backend_fallbacks_total", {"backend": "onnxruntime", "reason": "disagrees"})
    assert fallbacks == 1
    assert server.metrics.registry.get_sample_value("inference_backend_info", {"backend": "torch"}) == 1
    scan = simulated(1)[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await segmenter_pb2_grpc.SegmenterStub(channel).Segment(segmenter_pb2.SegmentRequest(
            image=tensor_pb2.Image(tensor=array_to_tensor(scan))))
    (expected,) = predict_batch(fresh_model(ModelConfig(), CPU), [scan])
    assert response.mask.data == expected.mask.tobytes()


async def test_a_default_server_serves_every_version_with_the_backend_it_chose(tmp_path, started) -> None:
    from weldstream.model import build_model
    from weldstream.weight_store import WeightStore

    from .conftest import server_config

    server = await started(server_config(tmp_path / "models", backend="auto", poll_interval_s=60))
    chosen = server.cfg.backend
    assert chosen in CPU_CANDIDATES and server.slot.current().runner.name == chosen
    assert server.metrics.registry.get_sample_value("inference_backend_info", {"backend": chosen}) == 1
    WeightStore(tmp_path / "models").publish(build_model(ModelConfig(), seed=3).state_dict(), ModelConfig(),
                                             parent_version=0)
    assert await server.swapper.swap_to_served()
    assert server.slot.current().version == 1 and server.slot.current().runner.name == chosen


def test_backend_agreement_is_the_share_of_equal_pixels() -> None:
    module = fresh_model(ModelConfig(encoder_depth=3, decoder_channels=(16, 8, 8)), CPU).module
    reference = eager(module)
    images = [window_intensities(torch.rand(1, 1, 40, 24))]
    assert agreement(reference.predict, reference.predict, images, 8) == 1.0
    assert agreement(_flipped(reference).predict, reference.predict, images, 8) == 0.0


def test_autocast_dtype_choice() -> None:
    cuda = torch.device("cuda")
    assert autocast_dtype(CPU, "auto") is None  # fp32 on the CPU
    assert autocast_dtype(CPU, "bf16") is None
    assert autocast_dtype(cuda, "auto", bf16_supported=lambda: True) is torch.bfloat16
    assert autocast_dtype(cuda, "auto", bf16_supported=lambda: False) is torch.float16
    assert autocast_dtype(cuda, "fp16", bf16_supported=lambda: True) is torch.float16
    assert autocast_dtype(cuda, "fp32", bf16_supported=lambda: True) is None
    with pytest.raises(ValueError):
        autocast_dtype(cuda, "int8")


def test_batches_run_at_power_of_two_buckets() -> None:
    assert [bucket_size(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert bucket_size(11, 8) == 11  # a request larger than the largest bucket runs at its own size
    with pytest.raises(ValueError):
        bucket_size(0, 8)


def test_batches_are_padded_to_buckets_when_the_backend_asks_and_results_stay_per_scan() -> None:
    loaded = fresh_model(ModelConfig(), CPU)
    seen: list[tuple[int, ...]] = []
    reference = eager(loaded.module)

    def recording(padded: torch.Tensor):
        seen.append(tuple(padded.shape))
        return reference.predict(padded)

    import dataclasses
    padded_backend = dataclasses.replace(loaded, backend=Backend("torch-bf16-graphs", recording, pads_batches=True))
    scans = [scan.astype(np.uint16) for scan in simulated(3, (64, 64))]  # one dtype: one group
    ours = predict_batch(padded_backend, scans)
    assert seen == [(4, 1, 64, 64)] and len(ours) == 3
    for scan, prediction in zip(scans, ours, strict=True):
        (alone,) = predict_batch(loaded, [scan])
        np.testing.assert_array_equal(prediction.mask, alone.mask)


def test_graph_cache_captures_a_shape_on_its_second_sighting_and_keeps_at_most_max() -> None:
    calls: list[str] = []

    def predict(padded: torch.Tensor):
        calls.append("eager")
        return padded[:, 0].to(torch.uint8), padded[:, 0]

    def fake_capture(inner, example):
        def replay(padded):
            calls.append(f"graph{tuple(example.shape)}")
            return inner(padded)
        return replay

    cache = GraphCache(predict, max_graphs=1, capture_after=2, capture=fake_capture)
    a, b = torch.zeros(1, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    cache(a)
    cache(a)
    cache(a)
    cache(b)
    cache(b)
    assert cache.shapes == [(1, 1, 32, 32)]  # the second shape found the cache full
    assert calls == ["eager", "graph(1, 1, 32, 32)", "eager", "graph(1, 1, 32, 32)", "eager", "eager", "eager"]


@needs_cuda
def test_bf16_autocast_with_cuda_graphs_agrees_with_fp32_eager_on_cuda() -> None:
    cuda = torch.device("cuda")
    loaded = with_backend(fresh_model(ModelConfig(), cuda), BackendSettings("torch"))
    assert loaded.runner.name.endswith("-graphs"), loaded.backend_refused
    reference = fresh_model(ModelConfig(), CPU)
    scans = simulated(2, (128, 128))
    for _ in range(3):  # eager, capture, replay
        ours = predict_batch(loaded, scans)
    for prediction, expected in zip(ours, predict_batch(reference, scans), strict=True):
        assert np.mean(prediction.mask == expected.mask) >= MIN_AGREEMENT


@needs_cuda
def test_padded_check_images_run_on_cuda() -> None:
    image = pad_to_multiple(torch.rand(1, 1, 40, 40, device="cuda"), 32)
    assert image.shape[-2:] == (64, 64)


async def test_a_swapped_in_version_gets_its_own_checked_onnx_session(tmp_path, started) -> None:
    import grpc

    from weldstream.codec import array_to_tensor
    from weldstream.model import build_model
    from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
    from weldstream.weight_store import WeightStore

    from .conftest import server_config

    server = await started(server_config(tmp_path / "models", backend="onnxruntime", poll_interval_s=60))
    assert server.slot.current().runner.name == "onnxruntime"
    WeightStore(tmp_path / "models").publish(build_model(ModelConfig(), seed=3).state_dict(), ModelConfig(),
                                             parent_version=0)
    assert await server.swapper.swap_to_served()
    live = server.slot.current()
    assert live.version == 1 and live.runner.name == "onnxruntime" and live.backend_refused == ""
    assert server.metrics.registry.get_sample_value("inference_backend_info", {"backend": "onnxruntime"}) == 1
    scan = simulated(1)[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await segmenter_pb2_grpc.SegmenterStub(channel).Segment(segmenter_pb2.SegmentRequest(
            image=tensor_pb2.Image(tensor=array_to_tensor(scan))))
    (expected,) = predict_batch(eager_of(live), [scan])
    mask = np.frombuffer(response.mask.data, np.uint8).reshape(scan.shape)
    assert response.model_version == 1 and np.mean(mask == expected.mask) >= MIN_AGREEMENT


def eager_of(loaded):
    """The same version served by fp32 eager torch."""
    import dataclasses

    return dataclasses.replace(loaded, backend=None)


def test_the_onnx_export_has_no_softmax_over_the_class_axis() -> None:
    """ONNX Runtime transposes the maps for a softmax along axis 1: at 512x512 the two softmaxes of the
    head took half of its time. The head's arithmetic avoids them."""
    import onnx

    graph = onnx.load_from_string(onnx_module.export_onnx(fresh_model(ModelConfig(), CPU).module, ModelConfig())).graph
    ops = {node.op_type for node in graph.node}
    assert "Conv" in ops and not ops & {"Softmax", "LogSoftmax"}


def test_auto_times_each_candidate_without_the_first_call_of_its_turn() -> None:
    """A candidate's first call after another's turn pays for the other's spinning pool; it is not counted."""
    from weldstream.server.backend_choice import time_ms

    calls: list[str] = []

    def slow_after_another(name: str, ms: float):
        def predict(image):
            first = not calls or calls[-1] != name
            calls.append(name)
            end = time.perf_counter() + (0.05 if first else ms / 1000)
            while time.perf_counter() < end:
                pass
        return predict

    timings = time_ms({"a": slow_after_another("a", 2.0), "b": slow_after_another("b", 6.0)}, torch.zeros(1))
    assert timings["a"] < 20 and timings["b"] < 30 and timings["a"] < timings["b"]


def test_every_cpu_backend_carries_the_polarity_heads_decision() -> None:
    """A head that inverts some scans and keeps others (by their mean brightness): ONNX Runtime and
    TorchScript give eager's masks, and those masks are not the network's on the scans as sent."""
    loaded = fresh_model(ModelConfig(), CPU)
    head = loaded.module.polarity
    scans = simulated(6)
    windowed = window_intensities(torch.from_numpy(np.stack(scans).astype(np.float32))[:, None])
    with torch.no_grad():  # the first feature's mean and max decide: scans differ, so decisions differ
        head.decide.weight.zero_()
        head.decide.weight[0, 0] = 1.0
        mean_feature = head.features(windowed)[:, 0].mean(dim=(1, 2))
        ranked = mean_feature.sort().values  # the threshold in the widest gap: no scan near it
        gap = int((ranked[1:] - ranked[:-1]).argmax())
        head.decide.bias.fill_(-float(ranked[gap] + ranked[gap + 1]) / 2)
    decisions = loaded.module.inverts(windowed)
    assert 0 < int(decisions.sum()) < len(scans)
    plain = fresh_model(ModelConfig(polarity=False), CPU)
    plain.module.load_state_dict({k: v for k, v in loaded.module.state_dict().items() if not k.startswith("polarity.")})
    eager_masks = [p.mask for p in predict_batch(loaded, scans)]
    plain_masks = [p.mask for p in predict_batch(plain, scans)]
    assert any(not np.array_equal(a, b) for a, b in zip(eager_masks, plain_masks, strict=True))
    for name in ("onnxruntime", "torchscript"):
        exported = with_backend(loaded, BackendSettings(name, threads=2))
        assert exported.runner.name == name and exported.backend_refused == ""
        for ours, reference in zip(predict_batch(exported, scans), eager_masks, strict=True):
            assert np.mean(ours.mask == reference) >= MIN_AGREEMENT
