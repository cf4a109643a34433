"""`weldstream bench store`: how soon a published version is answered by every replica, for a shared directory
and for an S3 bucket (SeaweedFS), measured side by side in one run.

Both fleets hear weld.models on the embedded broker as in production, and versions are published and announced
as the learner does, so what differs is the store: a directory's version is already on the replicas' disk, a
bucket's is downloaded into each replica's own cache. Timed as a rig sees it: from publish() returning to both
replicas answering a call with the new version. Each version reaches both before the next is published.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from aiokafka import AIOKafkaProducer

from weldstream.announcements import announce
from weldstream.bench.replica_calls import ReplicaCalls
from weldstream.bench.store_follow_report import format_table, write_report
from weldstream.dev.broker import EmbeddedBroker, free_port
from weldstream.dev.seaweed import SeaweedS3
from weldstream.dev.stack import Service
from weldstream.model import ModelConfig, build_model
from weldstream.object_store import ObjectWeightStore
from weldstream.topics import MODELS, ensure_topics
from weldstream.weight_store import Manifest, WeightStore

BACKENDS = ("directory", "s3")
BUCKET = "weldstream-bench"
PROBE_EVERY_S = 0.05  # each replica is called this often: the resolution of the figures
FOLLOW_S = 120.0  # a version that has not reached both replicas by then fails the run
FOLLOWING = "following model announcements on"  # the server's log line once it hears weld.models


@dataclass(frozen=True)
class StoreBench:
    versions: int = 20
    interval_s: float = 3.0
    replicas: int = 2
    # The servers' default: announcements, not polls, should bring each version; a missed one shows in the max.
    poll_interval_s: float = 5.0
    server_backend: str = "torch"  # eager torch starts fast; what is measured is the store, not the forward

    def __post_init__(self) -> None:
        if self.versions < 1 or self.interval_s < 0 or self.replicas < 1:
            raise ValueError("--versions and the replicas must be at least 1 and --interval at least 0")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--versions", type=int, default=StoreBench.versions, help="versions timed per store")
    p.add_argument("--interval", type=float, default=StoreBench.interval_s,
                   help="seconds from one publish to the next (longer if a version is still on its way)")
    p.add_argument("--out", type=Path, default=None, help="also write table.md and results.json into this folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(run_store_benchmark(StoreBench(args.versions, args.interval)))
    print(format_table(result))
    if args.out is not None:
        write_report(result, args.out)
    return 0


async def run_store_benchmark(cfg: StoreBench) -> dict[str, Any]:
    config = ModelConfig()
    states = [build_model(config, seed=seed).state_dict() for seed in (1, 2)]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="weldstream-bench-store-") as tmp, \
            EmbeddedBroker(free_port()) as broker:
        await ensure_topics(broker.bootstrap, {MODELS: 1})
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False)
        await producer.start()
        try:
            for backend in BACKENDS:
                work = Path(tmp) / backend
                work.mkdir()
                rows[backend] = await _time_fleet(backend, work, broker.bootstrap, producer, states, cfg)
        finally:
            await producer.stop()
    version_bytes = sum(t.numel() * t.element_size() for t in states[0].values())
    return {"config": {**asdict(cfg), "probe_every_s": PROBE_EVERY_S, "version_mb": round(version_bytes / 2**20, 1),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__},
            "rows": rows,
            "ratio_s3_over_directory": rows["s3"]["median_s"] / rows["directory"]["median_s"]}


async def _time_fleet(backend: str, work: Path, bootstrap: str, producer: AIOKafkaProducer,
                      states: list[dict[str, torch.Tensor]], cfg: StoreBench) -> dict[str, Any]:
    """Two replicas on one store; each version published, announced and timed until both answer with it."""
    seaweed = SeaweedS3(work / "s3") if backend == "s3" else None
    services: list[Service] = []
    with seaweed.exported() if seaweed else nullcontext():  # the publisher and the servers reach the S3 server
        try:
            if seaweed is not None:
                await asyncio.to_thread(seaweed.start)
                await asyncio.to_thread(seaweed.create_bucket, BUCKET)
            store = _open_store(backend, work)
            first = (await asyncio.to_thread(_publish, store, states[0])).version
            ports = [free_port() for _ in range(cfg.replicas)]
            services = [_server(backend, work, i, port, bootstrap, cfg).start() for i, port in enumerate(ports)]
            async with ReplicaCalls(ports, PROBE_EVERY_S) as calls:
                await _until(lambda: calls.reached(first) is not None, services, f"{backend}: replicas up on v{first}")
                await _until(lambda: all(FOLLOWING in _log(s) for s in services), services,
                             f"{backend}: replicas following {MODELS}")
                # An untimed warm-up version: the first swap of each replica pays for its one-off set-up.
                await _publish_and_follow(store, states[1], producer, calls, services)
                seconds, versions = [], []
                for i in range(cfg.versions):
                    version, took = await _publish_and_follow(store, states[i % 2], producer, calls, services)
                    versions.append(version)
                    seconds.append(round(took, 3))
                    await asyncio.sleep(max(0.0, cfg.interval_s - took))
                failed = len(calls.failures)
        finally:
            for service in services:
                service.stop()
            if seaweed is not None:
                seaweed.close()
    return {"versions": versions, "seconds": seconds, "median_s": statistics.median(seconds), "max_s": max(seconds),
            "calls": calls.answered, "failed_calls": failed}


def _open_store(backend: str, work: Path) -> WeightStore | ObjectWeightStore:
    if backend == "s3":
        return ObjectWeightStore(f"s3://{BUCKET}/models", cache_dir=work / "publisher")
    return WeightStore(work / "shared")


def _server(backend: str, work: Path, index: int, port: int, bootstrap: str, cfg: StoreBench) -> Service:
    """A directory's replicas share its folder; a bucket's each keep their own cache of the versions they load."""
    store = ["--model-dir", str(work / "shared"), "--store", ""] if backend == "directory" else \
        ["--model-dir", str(work / f"replica-{index}"), "--store", f"s3://{BUCKET}/models"]
    args = ["--log-level", "INFO", "serve", *store, "--host", "127.0.0.1", "--grpc-port", str(port),
            "--metrics-port", "-1", "--threads", "1", "--backend", cfg.server_backend, "--kafka", bootstrap,
            "--poll-interval", str(cfg.poll_interval_s)]
    return Service(f"{backend} replica {index}", args, work / f"server-{index}.log")


def _publish(store: WeightStore | ObjectWeightStore, state: dict[str, torch.Tensor]) -> Manifest:
    return store.publish(state, ModelConfig(), parent_version=store.latest() or 0, strategy="bench-store")


async def _publish_and_follow(store: WeightStore | ObjectWeightStore, state: dict[str, torch.Tensor],
                              producer: AIOKafkaProducer, calls: ReplicaCalls,
                              services: list[Service]) -> tuple[int, float]:
    """Publish and announce a version as the learner does; (its number, seconds from publish() returning to
    every replica answering with it)."""
    manifest = await asyncio.to_thread(_publish, store, state)
    published = time.monotonic()
    await announce(producer, MODELS, manifest)
    version = manifest.version
    await _until(lambda: calls.reached(version) is not None, services, f"v{version} on every replica")
    return version, calls.reached(version) - published


async def _until(predicate, services: list[Service], what: str) -> None:
    """Wait for ``predicate`` every probe; a replica that exits or FOLLOW_S without it fails the run."""
    deadline = time.monotonic() + FOLLOW_S
    while not predicate():
        for service in services:
            service.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {FOLLOW_S:.0f} s; {services[0].name}'s log ends: "
                               f"{_log(services[0])[-600:]!r}")
        await asyncio.sleep(PROBE_EVERY_S)


def _log(service: Service) -> str:
    return service.log_path.read_text(errors="replace") if service.log_path.exists() else ""
