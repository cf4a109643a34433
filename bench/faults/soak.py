"""A soak: many concurrent clients for minutes while a new version is swapped in every few seconds;
0 errors, the p99 latency and the server's resident-memory growth stated."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from weldstream.bench.faults.processes import scrape, start_server, stop, tail
from weldstream.bench.faults.report import FaultResult
from weldstream.codec import array_to_tensor
from weldstream.dev.broker import free_port
from weldstream.model import ModelConfig, build_model
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

WARM_UP_S = 3.0  # after the server first answers, before latencies count
LAST_SWAP_WAIT_S = 60.0  # longest wait for the newest version to be served after the last publish


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# A neighbour that wants every cycle, as a learner training on the same cores does.
BUSY_LOOP = "while True: pass"


async def soak(work: Path, clients: int, seconds: float, swap_every_s: float, neighbours: int = 0) -> FaultResult:
    beside = f" beside {neighbours} CPU-saturating processes (busy loops at the server's priority)" if neighbours \
        else ""
    result = FaultResult(
        fault=f"soak {clients} clients x {seconds:g} s" + (f", {neighbours} busy neighbours" if neighbours else ""),
        done=f"{clients} concurrent clients call Segment (256 x 256 scans) for {seconds:g} s while a new version "
             f"is published every {swap_every_s:g} s{beside}",
        expected="0 errors; every published version swapped in; p99 latency, swap time and resident-memory growth "
                 "stated",
    )
    store, config = WeightStore(work / "models"), ModelConfig()
    states = [build_model(config, seed=s).state_dict() for s in (1, 2)]
    store.publish(states[0], config, parent_version=0)
    port, metrics_port, log = free_port(), free_port(), work / "server.log"
    server = start_server(store.root, port, metrics_port, log)
    image = (np.random.default_rng(0).random((256, 256)) * 4095).astype(np.uint16)
    request = segmenter_pb2.SegmentRequest(scan_id="s", image=tensor_pb2.Image(tensor=array_to_tensor(image)))
    latencies: list[float] = []
    errors: list[str] = []
    measuring = asyncio.Event()
    done = asyncio.Event()

    async def client() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            while not done.is_set():
                counted = measuring.is_set()
                started = time.perf_counter()
                try:
                    await stub.Segment(request, wait_for_ready=True, timeout=60)
                    if counted:
                        latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as err:
                    errors.append(f"{err.code().name}: {err.details()}"[:200])

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await segmenter_pb2_grpc.SegmenterStub(channel).Segment(request, wait_for_ready=True, timeout=120)
    except grpc.aio.AioRpcError as err:
        stop(server)
        result.measured = f"the server never answered: {err.code().name}; log: {tail(log, 300)!r}"
        return result
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(neighbours)]
    try:
        await asyncio.sleep(WARM_UP_S)
        measuring.set()
        rss_start = rss_bytes(server.pid)
        published = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await asyncio.sleep(swap_every_s)
            published += 1
            await asyncio.to_thread(store.publish, states[published % 2], config, parent_version=store.latest())
        # The last swap: a loaded machine (the busy neighbours) can take longer than any fixed pause, so the
        # row waits until the server serves the newest version, or LAST_SWAP_WAIT_S (then the row fails).
        waited = time.monotonic()
        while time.monotonic() - waited < LAST_SWAP_WAIT_S:
            await asyncio.sleep(0.5)
            if scrape(metrics_port).get(("inference_model_version", ())) == store.latest():
                break
        last_swap_s = time.monotonic() - waited
        rss_end = rss_bytes(server.pid)
        samples = scrape(metrics_port)
        swapped = samples[("inference_model_swaps_total", (("result", "swapped"),))]
        live = samples[("inference_model_version", ())]
        swap_s = samples[("inference_model_swap_duration_seconds_sum", ())] / max(1.0, swapped)
    except (OSError, KeyError) as exc:
        result.measured = f"{exc!r}; server log: {tail(log, 300)!r}"
        return result
    finally:
        for process in busy:
            process.kill()
            process.wait()
        done.set()
        await asyncio.gather(*tasks)
        code = stop(server)
    ordered = np.sort(np.asarray(latencies))
    p50, p99 = (float(np.percentile(ordered, q)) * 1000 for q in (50, 99))
    growth = (rss_end - rss_start) / 2**20
    result.figures = {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:5],
                      "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "versions_published": published,
                      "swaps": swapped, "mean_swap_s": round(swap_s, 3), "live_version": live,
                      "newest_version": store.latest(),
                      "rss_start_mib": round(rss_start / 2**20, 1), "rss_end_mib": round(rss_end / 2**20, 1),
                      "rss_growth_mib": round(growth, 1), "server_exit_code": code,
                      "last_swap_wait_s": round(last_swap_s, 1)}
    result.passed = not errors and live == store.latest() and code == 0
    result.measured = (f"{len(latencies)} requests, {len(errors)} errors; p50 {p50:.0f} ms, p99 {p99:.0f} ms; "
                       f"{published} versions published, each loaded in {swap_s:.2f} s on average, live "
                       f"v{live:.0f}{' = newest' if live == store.latest() else ''} "
                       f"({last_swap_s:.1f} s after the last publish); resident memory "
                       f"{rss_start / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB ({growth:+.0f} MiB)")
    return result
