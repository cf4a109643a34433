"""`weldstream bench serve`: serving overhead, batching gain and swap latency, measured side by side.

Every number comes from one run on one machine: the in-process baseline and the gRPC server run the
same model, image size and thread count, and the server runs as its own process (as in production).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from weldstream.codec import array_to_tensor
from weldstream.dev.broker import free_port, wait_for_port
from weldstream.dev.stack import Service
from weldstream.model import ModelConfig, build_model
from weldstream.server.inference import predict_batch
from weldstream.server.loader import fresh_model
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _scan(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(size) * 4095).astype(np.uint16)


def in_process_latency(size: tuple[int, int], requests: int) -> tuple[list[float], list[float]]:
    """(full pipeline ms, bare forward ms) per call for the model the server would load."""
    loaded = fresh_model(ModelConfig(), torch.device("cpu"))
    scan = _scan(size)
    for _ in range(5):
        predict_batch(loaded, [scan])
    pipeline, forward = [], []
    x = torch.zeros(1, 1, *size).contiguous(memory_format=torch.channels_last)
    for _ in range(requests):
        started = time.perf_counter()
        predict_batch(loaded, [scan])
        pipeline.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        with torch.inference_mode():
            loaded.module(x)
        forward.append((time.perf_counter() - started) * 1000)
    return pipeline, forward


class ServerProcess:
    def __init__(self, model_dir: Path, threads: int, *extra: str) -> None:
        self.port = free_port()
        args = ["--log-level", "WARNING", "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
                "--grpc-port", str(self.port), "--metrics-port", "-1", "--threads", str(threads), *extra]
        self.service = Service("server", args, model_dir.parent / f"server-{self.port}.log")

    def __enter__(self) -> ServerProcess:
        self.service.start()
        wait_for_port("127.0.0.1", self.port, 120)
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()


def _request(size: tuple[int, int], seed: int = 0) -> segmenter_pb2.SegmentRequest:
    image = tensor_pb2.Image(tensor=array_to_tensor(_scan(size, seed)))
    return segmenter_pb2.SegmentRequest(scan_id="bench", image=image)


def sequential_latency(port: int, size: tuple[int, int], requests: int) -> list[float]:
    request = _request(size)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        for _ in range(5):
            stub.Segment(request)
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            stub.Segment(request)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


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

    def lines(self) -> list[str]:
        (p50_s, p99_s), (p50_w, p99_w) = _percentiles(self.steady_ms), _percentiles(self.swapping_ms)
        return [
            f"hot swap: {self.swaps} swaps; quiet and swapping phases of {SWAP_PHASE_S:.0f} s alternate",
            "latency at batch 1 (ms)          p50      p99    requests",
            f"  quiet phases                {p50_s:7.1f}  {p99_s:7.1f}  {len(self.steady_ms):6d}",
            f"  swapping phases             {p50_w:7.1f}  {p99_w:7.1f}  {len(self.swapping_ms):6d}",
            f"  swapping / quiet: p50 {p50_w / p50_s:.3f}x  p99 {p99_w / p99_s:.3f}x  (target p99 <= 1.25)",
        ]


def _stage_versions(staging: WeightStore, count: int) -> list[Path]:
    """Versions 1..count written ahead of time, so the timed run only renames them into the store."""
    weights = [build_model(ModelConfig(), seed=seed).state_dict() for seed in range(4)]
    for version in range(1, count + 1):
        staging.publish(weights[version % len(weights)], ModelConfig(), parent_version=version - 1, version=version)
    return [staging.path_of(version) for version in range(1, count + 1)]


def swap_latency(model_dir: Path, threads: int, size: tuple[int, int], requests: int) -> SwapFigures:
    """Latency while versions are swapped in against latency without, from one client run.

    Quiet and swapping phases alternate every SWAP_PHASE_S and each request counts in the phase it
    started in, so both sets see the same machine at the same time. Versions are written beforehand and
    appear in the store by an atomic rename (what a learner on another node looks like to the server),
    so the only extra work during a swapping phase is the server's own: hear, load, verify, warm, swap.
    """
    store = WeightStore(model_dir)
    staged = _stage_versions(WeightStore(model_dir.parent / f"{model_dir.name}-staged"), requests // 5 + 5)
    request = _request(size)
    with ServerProcess(model_dir, threads, "--poll-interval", "0.1") as server, \
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


def run_serving_benchmark(size: tuple[int, int], requests: int, clients: int, threads: int,
                          swap_requests: int = 600) -> str:
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    pipeline, forward = in_process_latency(size, requests)
    lines = [f"weldstream bench serve: {size[0]}x{size[1]} uint16 scans, U-Net/mobilenet_v2, CPU, {threads} threads",
             ""]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "models"
        with ServerProcess(model_dir, threads) as server:
            served = sequential_latency(server.port, size, requests)
            batched = throughput(server.port, size, requests, clients)
        with ServerProcess(model_dir, threads, "--max-batch-size", "1") as server:
            unbatched = throughput(server.port, size, requests, clients)
        swaps = swap_latency(Path(tmp) / "swap-models", threads, size, swap_requests)
    p50_in, p99_in = _percentiles(pipeline)
    p50_fw, p99_fw = _percentiles(forward)
    p50_srv, p99_srv = _percentiles(served)
    lines += [
        "latency at batch 1 (ms)          p50      p99",
        f"  model forward only          {p50_fw:7.1f}  {p99_fw:7.1f}",
        f"  in-process pipeline         {p50_in:7.1f}  {p99_in:7.1f}",
        f"  gRPC Segment (server proc)  {p50_srv:7.1f}  {p99_srv:7.1f}",
        f"  serving overhead (gRPC / in-process): p50 {p50_srv / p50_in:.3f}x  p99 {p99_srv / p99_in:.3f}x"
        "  (target <= 1.10)",
        "",
        f"throughput, {clients} concurrent clients, {requests} requests",
        f"  batching on  (max batch 8): {batched:7.1f} req/s",
        f"  batching off (max batch 1): {unbatched:7.1f} req/s",
        f"  gain: {batched / unbatched:.2f}x",
        "",
        *swaps.lines(),
    ]
    return "\n".join(lines)
