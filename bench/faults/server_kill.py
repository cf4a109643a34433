"""SIGKILL the server under load and restart it; clients with a gRPC retry policy lose no request, and
the restarted server serves the newest published version."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np

from weldstream.bench.faults.processes import FaultTimeout, start_server, stop, tail
from weldstream.bench.faults.report import FaultResult
from weldstream.codec import array_to_tensor
from weldstream.dev.broker import free_port
from weldstream.model import ModelConfig, build_model
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

# What a rig's client should use: retry UNAVAILABLE (a restarting server) with backoff, and wait for the
# channel to be ready instead of failing at once while the server is down.
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "weldstream.v1.Segmenter"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})
CALL_TIMEOUT_S = 120.0


async def server_kills(work: Path, kills: int, clients: int) -> FaultResult:
    result = FaultResult(
        fault=f"server SIGKILL x{kills} under load",
        done=f"{clients} clients (retry policy on UNAVAILABLE, wait_for_ready) call Segment without pause; the "
             f"server is SIGKILLed {kills} times, a new version is published while it is down, and it is restarted",
        expected="0 requests lost by those clients; the restarted server serves the newest published version",
    )
    store = WeightStore(work / "models")
    config = ModelConfig()
    store.publish(build_model(config, seed=1).state_dict(), config, parent_version=0)
    port, metrics_port, log = free_port(), free_port(), work / "server.log"
    server = start_server(store.root, port, metrics_port, log)
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    request = segmenter_pb2.SegmentRequest(scan_id="s", image=tensor_pb2.Image(tensor=array_to_tensor(image)))
    done = asyncio.Event()
    ok, lost, versions = [0], [], []
    latencies: list[float] = []

    async def client() -> None:
        options = [("grpc.service_config", RETRY_SERVICE_CONFIG), ("grpc.enable_retries", 1)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            while not done.is_set():
                started = time.perf_counter()
                try:
                    response = await stub.Segment(request, wait_for_ready=True, timeout=CALL_TIMEOUT_S)
                    ok[0] += 1
                    versions.append(response.model_version)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as err:
                    lost.append(f"{err.code().name}: {err.details()}"[:200])

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    restarts: list[float] = []
    try:
        await _served_some(ok, 20, log)
        for kill in range(kills):
            os.kill(server.pid, signal.SIGKILL)
            server.wait(10)
            down = time.perf_counter()
            store.publish(build_model(config, seed=2 + kill).state_dict(), config, parent_version=store.latest())
            server = start_server(store.root, port, metrics_port, log)
            before = ok[0]
            await _served_some(ok, before + 20, log)
            restarts.append(round(time.perf_counter() - down, 2))
    except FaultTimeout as exc:
        result.measured = str(exc)
        return result
    finally:
        done.set()
        await asyncio.gather(*tasks)
        code = stop(server)
    newest = store.latest()
    tail_versions = versions[-clients:]
    result.figures = {"requests_ok": ok[0], "requests_lost": len(lost), "first_errors": lost[:5],
                      "seconds_to_serve_again": restarts, "newest_version": newest,
                      "versions_in_last_responses": sorted(set(tail_versions)),
                      "max_latency_s": round(max(latencies), 2), "server_exit_code": code}
    result.passed = not lost and set(tail_versions) == {newest} and code == 0
    result.measured = (f"{ok[0]} requests answered, {len(lost)} lost; serving again {restarts} s after each kill; "
                       f"last responses from v{sorted(set(tail_versions))} (newest v{newest})")
    return result


async def _served_some(ok: list[int], target: int, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ok[0] < target:
        if time.monotonic() > deadline:
            raise FaultTimeout(f"clients stalled at {ok[0]} answers; server log: {tail(log, 300)!r}")
        await asyncio.sleep(0.1)
