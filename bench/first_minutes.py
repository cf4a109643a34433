"""`weldstream bench first-minutes`: a new installation's first minutes, started as a new user starts it.

``weldstream broker``, ``serve``, ``learn`` and ``simulate --kafka 127.0.0.1:9092``, each with its
defaults in its own process and one fresh working directory (so server and learner share
``runs/models``), and a client calling ``Segment`` twice a second with 256×256 scans of every simulated
domain for ``--duration`` seconds from the moment the rig starts. It answers: how many new versions are
served in that time, whether any call fails, and how fresh each served version is: the server's swap
time (its log) minus the median label time of the scans the version learned from (its manifest), the
same figure as ``inference_model_freshness_seconds``.

The services take the default ports (Kafka 9092, gRPC 8001, metrics 8002 and 8003): the benchmark refuses
to start while any of them is taken.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_PORTS = {"Kafka": 9092, "gRPC": 8001, "server metrics": 8002, "learner metrics": 8003}
SWAP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*model swapped to version (\d+)")


@dataclass(frozen=True)
class FirstMinutes:
    duration_s: float = 240.0
    calls_per_s: float = 2.0
    size: tuple[int, int] = (256, 256)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=FirstMinutes.duration_s,
                   help="seconds the client calls, from the rig's start (default 240)")
    p.add_argument("--out", type=Path, default=None, help="also write report.md and results.json into this folder")
    p.add_argument("--keep", type=Path, default=None,
                   help="working directory to run in and keep (logs, versions); default a temporary one")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    taken = [f"{name} {port}" for name, port in DEFAULT_PORTS.items() if not _port_free(port)]
    if taken:
        print(f"bench first-minutes: the services' default ports are taken ({', '.join(taken)}); stop what holds "
              "them and run again")
        return 2
    cfg = FirstMinutes(duration_s=args.duration)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run_first_minutes(cfg, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="weldstream-first-minutes-") as work:
            result = run_first_minutes(cfg, Path(work))
    print(format_report(result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "report.md").write_text(format_report(result))
    return 0 if result["failed_calls"] == 0 else 1


def run_first_minutes(cfg: FirstMinutes, work: Path) -> dict[str, Any]:
    """Start the four commands in ``work``, call the server for ``cfg.duration_s`` from the rig's start, stop
    everything, and read what happened from the server's log, the versions' manifests and the client."""
    import torch

    from weldstream.dev.stack import Service, scrape, value, wait_ready
    from weldstream.weight_store import WeightStore

    logs = work / "logs"
    services = [Service(name, args, logs / f"{name}.log", cwd=work)
                for name, args in (("broker", ["broker"]), ("serve", ["serve"]), ("learn", ["learn"]))]
    rig = Service("simulate", ["simulate", "--kafka", "127.0.0.1:9092"], logs / "simulate.log", cwd=work)
    client = _Client(cfg)
    try:
        services[0].start()
        wait_ready(services[0], "127.0.0.1", DEFAULT_PORTS["Kafka"])
        for service in services[1:]:
            service.start()
        wait_ready(services[1], "127.0.0.1", DEFAULT_PORTS["gRPC"])
        started = time.time()
        rig.start()
        client.run(until=time.monotonic() + cfg.duration_s)
        ended = time.time()
        learner = scrape(DEFAULT_PORTS["learner metrics"])
    finally:
        for service in (rig, *reversed(services)):
            service.stop()
    store = WeightStore(work / "runs" / "models")
    manifests = {v: asdict(store.manifest(v)) for v in store.versions()}
    swaps = swap_times((logs / "serve.log").read_text(errors="replace"))
    rows = freshness_rows(swaps, manifests, started, ended)
    fresh = [r["freshness_s"] for r in rows if r["freshness_s"] is not None]
    judged = value(learner, "learner_judging_duration_seconds_count")
    last = manifests[max(manifests)] if manifests else {}
    return {
        "config": {**asdict(cfg), "cpu_count": os.cpu_count(),
                   "torch": torch.__version__, "finished": time.strftime("%Y-%m-%d %H:%M")},
        "calls": client.calls, "failed_calls": client.failed, "errors": client.errors[:5],
        "p50_ms": statistics.median(client.latencies_ms) if client.latencies_ms else None,
        "versions_answered": sorted(client.versions),
        "new_versions_served": len([v for v in client.versions if v > 0]),
        "versions": rows,
        "freshness_median_s": statistics.median(fresh) if fresh else None,
        "judgement_mean_s": value(learner, "learner_judging_duration_seconds_sum") / judged if judged else None,
        "last_version": {"version": last.get("version"), "steps": last.get("metrics", {}).get("steps"),
                         "scores": {d: s["miou"] for d, s in sorted(last.get("scores", {}).items())}},
    }


def swap_times(server_log: str) -> dict[int, float]:
    """Each version's first swap in the server's log (``%(asctime)s`` lines, local time), as Unix time."""
    swaps: dict[int, float] = {}
    for line in server_log.splitlines():
        match = SWAP.match(line)
        if match:
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            swaps.setdefault(int(match.group(2)), stamp)
    return swaps


def freshness_rows(swaps: dict[int, float], manifests: dict[int, dict[str, Any]], started: float,
                   ended: float) -> list[dict[str, Any]]:
    """Per version swapped in between ``started`` and ``ended``: when, and its freshness (None for a version
    that learned no newly timed label, e.g. one trained on after the stream stopped)."""
    rows = []
    for version in sorted(swaps):
        if not started <= swaps[version] <= ended:
            continue
        metrics = manifests.get(version, {}).get("metrics", {})
        median = metrics.get("label_time_median") or 0.0
        rows.append({"version": version, "swapped_after_s": swaps[version] - started,
                     "labels": metrics.get("labels_learned", 0), "steps": metrics.get("steps"),
                     "freshness_s": swaps[version] - median if median > 0 else None})
    return rows


def format_report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    fresh = [r for r in result["versions"] if r["freshness_s"] is not None]
    median = result["freshness_median_s"]
    lines = [
        "# weldstream bench first-minutes: a new installation at its defaults",
        "",
        f"`weldstream broker`, `serve`, `learn` and `simulate --kafka 127.0.0.1:9092`, each with its defaults; a "
        f"client calling `Segment` {cfg['calls_per_s']:g} times a second with {cfg['size'][0]}×{cfg['size'][1]} "
        f"scans of every domain for {cfg['duration_s']:g} s from the rig's start. {cfg['cpu_count']} CPUs, torch "
        f"{cfg['torch']}, {cfg['finished']}.",
        "",
        f"- New versions served within {cfg['duration_s']:g} s: **{result['new_versions_served']}**; calls "
        f"{result['calls']}, **{result['failed_calls']} failed**, p50 {result['p50_ms'] or 0:.1f} ms.",
        f"- Label-to-served freshness, median over the versions that learned newly labeled scans: "
        f"**{_seconds(median)}** ({len(fresh)} versions).",
        f"- Judgement (checkpoint, scoring, publish), mean: "
        f"{_seconds(result['judgement_mean_s'])}; the last "
        f"version (v{result['last_version']['version']}) after {result['last_version']['steps']} steps.",
        "",
        "| version | swapped in after, s | labels learned | steps | freshness, s |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {r['version']} | {r['swapped_after_s']:.1f} | {r['labels']} | {r['steps']} | "
          f"{_seconds(r['freshness_s'], unit='')} |" for r in result["versions"]],
        "",
        "Held-out mIoU of the last version (its manifest), per domain: "
        + ", ".join(f"{d} {100 * m:.1f}" for d, m in result["last_version"]["scores"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def _seconds(value: float | None, unit: str = " s") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


class _Client:
    """Calls ``Segment`` at a steady rate with one scan of each domain in turn; counts what fails."""

    def __init__(self, cfg: FirstMinutes) -> None:
        self.cfg = cfg
        self.calls = self.failed = 0
        self.errors: list[str] = []
        self.versions: set[int] = set()
        self.latencies_ms: list[float] = []

    def run(self, until: float) -> None:
        thread = threading.Thread(target=self._loop, args=(until,), name="first-minutes-client")
        thread.start()
        thread.join()

    def _loop(self, until: float) -> None:
        import grpc

        from weldstream.codec import array_to_tensor
        from weldstream.simulator import generate_scan
        from weldstream.simulator.domains import DOMAINS
        from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2

        scans = [generate_scan(d, 50_000 + i, self.cfg.size).image for i, d in enumerate(DOMAINS)]
        period = 1.0 / self.cfg.calls_per_s
        with grpc.insecure_channel(f"127.0.0.1:{DEFAULT_PORTS['gRPC']}",
                                   options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            while time.monotonic() < until:
                began = time.monotonic()
                request = segmenter_pb2.SegmentRequest(
                    scan_id=f"first-minutes-{self.calls}",
                    image=tensor_pb2.Image(tensor=array_to_tensor(scans[self.calls % len(scans)])))
                try:
                    response = stub.Segment(request, timeout=10)
                    self.versions.add(response.model_version)
                    self.latencies_ms.append(1e3 * (time.monotonic() - began))
                except grpc.RpcError as err:
                    self.failed += 1
                    self.errors.append(f"{err.code().name}: {err.details()}")
                self.calls += 1
                time.sleep(max(0.0, period - (time.monotonic() - began)))


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
