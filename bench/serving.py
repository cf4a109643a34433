"""`weldstream bench serve`: serving overhead, batching gain and swap latency, measured side by side.

Every number comes from one run on one machine and one device: the baselines and the gRPC server run
the same model, image size, thread count and device, and the server runs as its own process (as in
production). The first baseline is what a user writes by hand: the fp32 eager forward of the same
model (``build_model``, eval, ``torch.inference_mode``, a contiguous float32 batch of one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from weldstream.codec import array_to_tensor
from weldstream.dev.broker import free_port, wait_for_port
from weldstream.dev.stack import Service
from weldstream.dev.versions import publish_learned_version
from weldstream.kserve import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from weldstream.model import ModelConfig, build_model
from weldstream.preprocess import pad_to_multiple, window_intensities
from weldstream.server.backend_choice import fastest_backend
from weldstream.server.backends import BackendSettings
from weldstream.server.config import MODEL_NAME
from weldstream.server.inference import predict_batch
from weldstream.server.loader import fresh_model, with_backend
from weldstream.simulator import generate_scan
from weldstream.threads import one_thread
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

WARM_UP_CALLS = 5
ADAPTED_RIG = "bench-adapted-rig"
ADAPT_CALLS = 400
BLOCK = 10  # calls of one row before the next row's turn


@dataclass(frozen=True)
class ServeBench:
    size: tuple[int, int] = (256, 256)
    requests: int = 200
    clients: int = 16
    threads: int = 0  # 0: torch's default
    device: str = "cpu"
    backend: str = "auto"  # the server's default
    swap_requests: int = 600


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _scan(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(size) * 4095).astype(np.uint16)


def interleaved(calls: dict[str, Callable[[], object]], count: int, device: torch.device,
                block: int = BLOCK) -> dict[str, list[float]]:
    """ms per call of each named call, ``count`` times each, taken in turns of ``block`` calls so that
    every row sees the same machine (a shared machine's load moves within a run); on CUDA each call is
    waited for. Every call is warmed up first."""
    def once(call: Callable[[], object]) -> float:
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) * 1000

    for call in calls.values():
        for _ in range(WARM_UP_CALLS):
            once(call)
    times: dict[str, list[float]] = {name: [] for name in calls}
    while any(len(values) < count for values in times.values()):
        for name, call in calls.items():
            for _ in range(min(block, count - len(times[name]))):
                times[name].append(once(call))
    return times


def hand_written(cfg: ServeBench) -> tuple[torch.nn.Module, torch.Tensor]:
    """The baseline a user writes by hand: the fp32 eager model on cfg.device and its input, a batch of one."""
    device = torch.device(cfg.device)
    return build_model(ModelConfig()).to(device).eval(), torch.randn(1, 1, *cfg.size, device=device)


def client_calls(cfg: ServeBench, channel: grpc.Channel) -> dict[str, Callable[[], object]]:
    """What a rig's process times, at batch 1 on cfg.device: the hand-written fp32 eager forward (on CUDA
    also under bf16 autocast; on a CPU with several threads also on one thread), gRPC Segment with and
    without regions, and KServe v2 ModelInfer with an FP32 scan (the call tritonclient makes)."""
    stub = segmenter_pb2_grpc.SegmenterStub(channel)
    infer = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
    device = torch.device(cfg.device)
    by_hand, x = hand_written(cfg)

    @torch.inference_mode()
    def eager_fp32() -> None:
        by_hand(x)

    @torch.inference_mode()
    def eager_fp32_one_thread() -> None:
        with one_thread():
            by_hand(x)

    @torch.inference_mode()
    def eager_bf16() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            by_hand(x)

    default, with_regions, fp32 = _request(cfg.size), _request(cfg.size, regions=True), _infer_request(cfg.size)
    own = _request(cfg.size, rig=ADAPTED_RIG)
    adapt_rig(stub, own)
    calls: dict[str, Callable[[], object]] = {"eager_fp32_forward": eager_fp32}
    if device.type == "cuda":
        calls["eager_bf16_forward"] = eager_bf16
    elif torch.get_num_threads() > 1:  # shows what thread contention on shared cores costs the baseline
        calls["eager_fp32_forward_one_thread"] = eager_fp32_one_thread
    calls.update({
        "grpc_segment": lambda: stub.Segment(default),
        "grpc_segment_with_regions": lambda: stub.Segment(with_regions),
        "grpc_segment_rig_statistics": lambda: stub.Segment(own),
        "kserve_model_infer_fp32": lambda: infer.ModelInfer(fp32),
    })
    return calls


def pipeline_calls(cfg: ServeBench) -> tuple[dict[str, Callable[[], object]], str]:
    """The server's own work in this process, at batch 1, beside the same hand-written eager forward (its
    baseline): the backend alone and the whole pipeline with and without regions (staging, windowing,
    forward, argmax, fractions, regions); and the name of the backend it runs on."""
    device = torch.device(cfg.device)
    by_hand, x = hand_written(cfg)
    loaded = with_backend(fresh_model(ModelConfig(), device), BackendSettings(cfg.backend, threads=cfg.threads))
    scan = _scan(cfg.size)
    padded = pad_to_multiple(window_intensities(torch.from_numpy(scan)[None, None].to(device)), loaded.config.stride)

    @torch.inference_mode()
    def eager_fp32() -> None:
        by_hand(x)

    @torch.inference_mode()
    def backend_forward() -> None:
        loaded.runner.predict(padded)

    return {
        "eager_fp32_forward_beside_pipeline": eager_fp32,
        "backend_forward": backend_forward,
        "pipeline_mask_only": lambda: predict_batch(loaded, [scan], False),
        "pipeline_with_regions": lambda: predict_batch(loaded, [scan], True),
    }, loaded.runner.name


def timed_rows(cfg: ServeBench, port: int | None) -> tuple[dict[str, list[float]], str | None]:
    """Run in a process of its own: the client rows against the server on ``port``, or (None) the
    pipeline rows. Kept apart because thread pools are per process: a backend's pool (ONNX Runtime's,
    frozen TorchScript's) in the client's process would still be busy on the shared cores while the
    server answers, and a client never carries one."""
    torch.set_num_threads(cfg.threads)
    if port is None:
        calls, backend = pipeline_calls(cfg)
        return interleaved(calls, cfg.requests, torch.device(cfg.device)), backend
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return interleaved(client_calls(cfg, channel), cfg.requests, torch.device(cfg.device)), None


def in_own_process(cfg: ServeBench, port: int | None) -> tuple[dict[str, list[float]], str | None]:
    """``timed_rows`` in a fresh (spawned) process."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(timed_rows, cfg, port).result()


class ServerProcess:
    def __init__(self, model_dir: Path, cfg: ServeBench, *extra: str) -> None:
        self.port = free_port()
        args = ["--log-level", "WARNING", "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
                "--grpc-port", str(self.port), "--metrics-port", "-1", "--threads", str(cfg.threads),
                "--device", cfg.device, "--backend", cfg.backend, *extra]
        self.service = Service("server", args, model_dir.parent / f"server-{self.port}.log")

    def __enter__(self) -> ServerProcess:
        self.service.start()
        wait_for_port("127.0.0.1", self.port, 120)
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()


def _request(size: tuple[int, int], seed: int = 0, regions: bool | None = None, rig: str = ""
             ) -> segmenter_pb2.SegmentRequest:
    """A request as a rig sends it; ``regions`` None leaves return_regions unset (no regions, the default).
    Without a ``rig`` id the version's statistics serve it."""
    image = tensor_pb2.Image(tensor=array_to_tensor(_scan(size, seed)))
    return segmenter_pb2.SegmentRequest(scan_id="bench", image=image, return_regions=regions, rig_id=rig)


def publish_rig_ready_version(store: WeightStore, size: tuple[int, int]) -> None:
    """Version 1: fresh weights with one simulated domain's BatchNorm statistics and drift reference, so a
    rig whose scans differ is adapted (the untrained version 0 serves every rig with the version's
    statistics and has no reference to judge a rig by). The rows time the path, not the masks."""
    domain = "ut-pe100-5mhz"
    publish_learned_version(store, domain, [generate_scan(domain, 1000 + i, size).image for i in range(16)],
                            [generate_scan(domain, 2000 + i, size).image for i in range(16)])


def adapt_rig(stub: segmenter_pb2_grpc.SegmenterStub, request: segmenter_pb2.SegmentRequest,
              most: int = ADAPT_CALLS) -> int:
    """Send the rig's request until the server answers it with the rig's own statistics (the timed row is
    then the path an adapted rig takes: on a backend that folds the version's statistics into its
    convolutions, fp32 eager torch). Returns the calls it took."""
    for calls in range(1, most + 1):
        if stub.Segment(request).normalisation.source == "rig":
            return calls
        time.sleep(0.05)  # the server measures each scan into the rig's statistics off the serving path
    raise RuntimeError(f"rig {request.rig_id!r} was not served with its own statistics after {most} scans")


def _infer_request(size: tuple[int, int]) -> grpc_predict_v2_pb2.ModelInferRequest:
    """KServe v2 ModelInfer as tritonclient sends it: one FP32 scan (1, 1, H, W) in raw_input_contents,
    every output."""
    scan = _scan(size).astype("<f4")
    tensor = grpc_predict_v2_pb2.ModelInferRequest.InferInputTensor(name="scan", datatype="FP32",
                                                                    shape=[1, 1, *size])
    return grpc_predict_v2_pb2.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor],
                                                 raw_input_contents=[scan.tobytes()])


def build_cost(cfg: ServeBench, repeats: int = 3) -> dict[str, float]:
    """Seconds a swap spends building the served backend beside the live model (median of ``repeats``):
    for ONNX Runtime the export, the session and the agreement check with eager; ``export_s`` alone."""
    device = torch.device(cfg.device)
    settings = BackendSettings(cfg.backend, threads=cfg.threads)
    totals, exports = [], []
    for _ in range(repeats):
        loaded = fresh_model(ModelConfig(), device)
        started = time.perf_counter()
        with_backend(loaded, settings)
        totals.append(time.perf_counter() - started)
        if cfg.backend == "onnxruntime":
            from weldstream.server.onnx_backend import export_onnx

            started = time.perf_counter()
            export_onnx(loaded.module, loaded.config)
            exports.append(time.perf_counter() - started)
    cost = {"total_s": statistics.median(totals)}
    if exports:
        cost["export_s"] = statistics.median(exports)
    return cost


async def _concurrent(port: int, size: tuple[int, int], requests: int, clients: int) -> float:
    request = _request(size)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        await asyncio.gather(*(stub.Segment(request) for _ in range(clients)))
        remaining = requests

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await stub.Segment(request)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return requests / (time.perf_counter() - started)


def throughput(port: int, size: tuple[int, int], requests: int, clients: int) -> float:
    return asyncio.run(_concurrent(port, size, requests, clients))


SWAP_PHASE_S = 2.0  # quiet and swapping phases alternate this often
SWAP_EVERY_S = 0.4  # a new version appears this often during a swapping phase
SETTLE_S = 0.5  # quiet-phase requests this soon after a swapping phase are counted in neither set


@dataclass(frozen=True)
class SwapFigures:
    steady_ms: list[float]
    swapping_ms: list[float]
    swaps: int


def _stage_versions(staging: WeightStore, count: int) -> list[Path]:
    """Versions 1..count written ahead of time, so the timed run only renames them into the store."""
    weights = [build_model(ModelConfig(), seed=seed).state_dict() for seed in range(4)]
    for version in range(1, count + 1):
        staging.publish(weights[version % len(weights)], ModelConfig(), parent_version=version - 1, version=version)
    return [staging.path_of(version) for version in range(1, count + 1)]


def swap_latency(model_dir: Path, cfg: ServeBench) -> SwapFigures:
    """Latency while versions are swapped in against latency without, from one client run.

    Quiet and swapping phases alternate every SWAP_PHASE_S and each request counts in the phase it
    started in, so both sets see the same machine at the same time. Versions are written beforehand and
    appear in the store by an atomic rename (what a learner on another node looks like to the server),
    so the only extra work during a swapping phase is the server's own: hear, load, verify, warm, swap.
    """
    size, requests = cfg.size, cfg.swap_requests
    store = WeightStore(model_dir)
    staged = _stage_versions(WeightStore(model_dir.parent / f"{model_dir.name}-staged"), requests // 5 + 5)
    request = _request(size)
    with ServerProcess(model_dir, cfg, "--poll-interval", "0.1") as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        for _ in range(5):
            stub.Segment(request)
        stop = threading.Event()
        began = time.perf_counter() + 0.2

        def publish() -> None:
            per_phase = round(SWAP_PHASE_S / SWAP_EVERY_S)
            times = (began + (2 * cycle + 1) * SWAP_PHASE_S + (i + 0.5) * SWAP_EVERY_S
                     for cycle in itertools.count() for i in range(per_phase))
            for path, at in zip(staged, times, strict=False):
                if stop.wait(max(0.0, at - time.perf_counter())):
                    return
                path.rename(store.path_of(int(path.name)))

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        time.sleep(max(0.0, began - time.perf_counter()))
        steady, swapping, versions = [], [], set()
        while (len(steady) < requests or len(swapping) < requests) and publisher.is_alive():
            started = time.perf_counter()
            versions.add(stub.Segment(request).model_version)
            latency = (time.perf_counter() - started) * 1000
            into = (started - began) % (2 * SWAP_PHASE_S)
            if into >= SWAP_PHASE_S:
                swapping.append(latency)
            elif into >= SETTLE_S:
                steady.append(latency)
        stop.set()
        publisher.join()
    return SwapFigures(steady, swapping, len(versions) - 1)


def run_serving_benchmark(cfg: ServeBench) -> dict[str, Any]:
    """Every row, as milliseconds and ratios (see ``format_table``)."""
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    # auto is resolved here as the server resolves it, and the server is given the choice, so the
    # in-process rows and the server run the same backend.
    device = torch.device(cfg.device)
    chosen, auto_ms = fastest_backend(fresh_model(ModelConfig(), device).module, ModelConfig(), device,
                                      BackendSettings(cfg.backend, threads=threads))
    asked = cfg.backend
    cfg = ServeBench(**{**asdict(cfg), "threads": threads, "backend": chosen})
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        publish_rig_ready_version(WeightStore(model_dir), cfg.size)
        with ServerProcess(model_dir, cfg) as server:
            rows, _ = in_own_process(cfg, server.port)
            pipeline, backend = in_own_process(cfg, None)
            rows.update(pipeline)
            batched = throughput(server.port, cfg.size, cfg.requests, cfg.clients)
        with ServerProcess(model_dir, cfg, "--max-batch-size", "1") as server:
            unbatched = throughput(server.port, cfg.size, cfg.requests, cfg.clients)
        swaps = swap_latency(Path(tmp) / "swap-models", cfg) if cfg.swap_requests else None
    cost = build_cost(cfg)
    p50 = {name: _percentiles(values)[0] for name, values in rows.items()}
    p99 = {name: _percentiles(values)[1] for name, values in rows.items()}
    ratios = {
        "grpc_over_eager_fp32_forward": p50["grpc_segment"] / p50["eager_fp32_forward"],
        "grpc_with_regions_over_eager_fp32_forward": p50["grpc_segment_with_regions"] / p50["eager_fp32_forward"],
        "kserve_fp32_over_eager_fp32_forward": p50["kserve_model_infer_fp32"] / p50["eager_fp32_forward"],
        # each against the eager forward timed in its own process
        "grpc_over_pipeline": (p50["grpc_segment"] / p50["eager_fp32_forward"])
        / (p50["pipeline_mask_only"] / p50["eager_fp32_forward_beside_pipeline"]),
        "around_forward_share_mask_only": 1 - p50["backend_forward"] / p50["pipeline_mask_only"],
        "around_forward_share_with_regions": 1 - p50["backend_forward"] / p50["pipeline_with_regions"],
        "batching_gain": batched / unbatched,
        # what a rig served with its own statistics pays over the version's path, same server, same scan
        "rig_statistics_over_version": p50["grpc_segment_rig_statistics"] / p50["grpc_segment"],
    }
    if "eager_fp32_forward_one_thread" in p50:
        ratios["grpc_over_eager_fp32_forward_one_thread"] = p50["grpc_segment"] / p50["eager_fp32_forward_one_thread"]
    if "eager_bf16_forward" in p50:
        ratios["grpc_over_eager_bf16_forward"] = p50["grpc_segment"] / p50["eager_bf16_forward"]
    result: dict[str, Any] = {
        "config": {**asdict(cfg), "size": list(cfg.size), "served_backend": backend, "backend_asked": asked,
                   "auto_timings_ms": auto_ms, "torch": torch.__version__,
                   "load_average": list(os.getloadavg()), "cpu_count": os.cpu_count(),
                   "device_name": torch.cuda.get_device_name(cfg.device) if cfg.device.startswith("cuda") else "cpu"},
        "p50_ms": p50, "p99_ms": p99, "ratios": ratios,
        "throughput_rps": {"batching_on": batched, "batching_off": unbatched},
        "backend_build": cost,
    }
    if swaps is not None:
        (q50, q99), (w50, w99) = _percentiles(swaps.steady_ms), _percentiles(swaps.swapping_ms)
        result["swap"] = {"swaps": swaps.swaps, "quiet_p50_ms": q50, "quiet_p99_ms": q99, "swapping_p50_ms": w50,
                          "swapping_p99_ms": w99, "p50_ratio": w50 / q50, "p99_ratio": w99 / q99,
                          "requests": [len(swaps.steady_ms), len(swaps.swapping_ms)]}
    return result


