"""`weldstream bench serve`: serving overhead, batching gain and swap latency, measured side by side.

Every number comes from one run on one machine: the in-process baseline and the gRPC server run the
same model, image size and thread count, and the server runs as its own process (as in production).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from weldstream.broker import free_port, wait_for_port
from weldstream.codec import array_to_tensor
from weldstream.model import ModelConfig, build_model
from weldstream.server.inference import predict_batch
from weldstream.server.model_slot import fresh_model
from weldstream.stack import Service
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


def swap_latency(model_dir: Path, threads: int, size: tuple[int, int], requests: int) -> tuple[float, float, int]:
    """(steady p99 ms, p99 ms while versions are published and swapped in, swaps seen)."""
    store = WeightStore(model_dir)
    with ServerProcess(model_dir, threads, "--poll-interval", "0.2") as server:
        steady = sequential_latency(server.port, size, requests)
        stop = threading.Event()

        def publish() -> None:
            version = store.latest() or 0
            while not stop.is_set():
                version += 1
                store.publish(build_model(ModelConfig(), seed=version).state_dict(), ModelConfig(),
                              parent_version=version - 1)
                stop.wait(0.4)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        versions: set[int] = set()
        request = _request(size)
        during = []
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            for _ in range(requests):
                started = time.perf_counter()
                versions.add(stub.Segment(request).model_version)
                during.append((time.perf_counter() - started) * 1000)
        stop.set()
        publisher.join()
    return _percentiles(steady)[1], _percentiles(during)[1], len(versions) - 1


def run_serving_benchmark(size: tuple[int, int], requests: int, clients: int, threads: int) -> str:
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
        steady_p99, swap_p99, swaps = swap_latency(Path(tmp) / "swap-models", threads, size, requests)
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
        f"hot swap: {swaps} swaps during {requests} sequential requests",
        f"  p99 steady {steady_p99:.1f} ms, p99 during swaps {swap_p99:.1f} ms, ratio {swap_p99 / steady_p99:.2f}"
        "  (target <= 1.25)",
    ]
    return "\n".join(lines)
