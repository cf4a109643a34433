"""`weldstream demo`: broker, server, learner, a drifting simulated rig and a calling client, all live.

The server and learner run as real child processes (`weldstream serve`, `weldstream learn`), the rig
and the client run here; a terminal dashboard shows the loop learning while the scans drift. The loop is
closed: the server sends the scans it doubts to `weld.scans.review`, and the simulated inspector labels
those first (with the true masks the rig knows), random scans of the rig's domain otherwise. The web
console runs beside them (`weldstream console`), with an operator account made for the demo; with
``--no-simulated-inspector`` the review queue is left to a person in the console.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from rich.console import Console
from rich.live import Live

from weldstream.cli_args import parse_size
from weldstream.codec import array_to_tensor
from weldstream.dev.broker import EmbeddedBroker, free_port
from weldstream.dev.dashboard import render
from weldstream.dev.inspector import SentScans, follow_review, inspect
from weldstream.dev.rig import Schedule
from weldstream.dev.stack import Service, scrape, value, wait_ready
from weldstream.replay.gem import STRATEGIES, StepConfig
from weldstream.settings import optional_text, setting
from weldstream.simulator import domain_names, generate_scan
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import WeightStore

log = logging.getLogger(__name__)
RIG_ID = "sim-rig-1"


def _domain_list(text: str) -> tuple[str, ...]:
    return tuple(d.strip() for d in text.split(",") if d.strip())


@dataclass(frozen=True)
class DemoConfig:
    out: Path = setting(Path("runs/demo"), help="folder for the demo's weight store, logs and summary")
    duration_s: float = setting(240.0, flag="--duration", help="seconds to run (Ctrl-C stops earlier)")
    domains: tuple[str, ...] = setting((), parse=_domain_list,
                                       help="comma-separated domains in stream order (default: all)")
    per_domain: int = setting(200, help="labeled scans per domain before the drift")
    rate: float = setting(8.0, help="labeled scans per second from the rig")
    size: tuple[int, int] = setting((64, 64), parse=parse_size, help="scan size; small so 2 CPU cores learn live")
    max_steps_per_scan: int = setting(4, help="training steps each labeled scan earns the learner")
    learner_threads: int = setting(1, help="torch threads of the learner (the server takes one); a machine with more "
                                                        "cores learns faster with more")
    client_rate: float = setting(4.0, help="Segment calls per second")
    kafka: str | None = setting(None, parse=optional_text,
                                help="use this Kafka cluster instead of the embedded broker")
    strategy: str = setting(StepConfig.strategy, choices=STRATEGIES,
                            help="the learner's continual-learning step (default: the learner's own)")
    publish_every_steps: int = setting(20, help="the learner considers a version every N steps")
    console_port: int = setting(8080, help="port of the web console (taken: any free one; 0: no console)")
    simulated_inspector: bool = setting(True, help="the simulated inspector answers the review queue "
                                                   "(--no-simulated-inspector: a person does, in the console)")
    live_view: bool = setting(True, flag="--live",
                              help="a live terminal dashboard (--no-live prints snapshots, for CI logs)")


@dataclass
class DemoState:
    """What the rig and the client have seen, for the dashboard and the summary."""

    rig_domain: str = ""
    produced: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=400))
    all_latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    failures: int = 0
    versions_seen: dict[int, float] = field(default_factory=dict)  # version -> first time a response named it
    labeled_from_review: int = 0  # labels the inspector gave scans the server sent for review
    doubts: deque[float] = field(default_factory=lambda: deque(maxlen=200))  # doubt of recent responses


async def call_server(target: str, state: DemoState, rate: float, size: tuple[int, int], stop: asyncio.Event,
                      sent: SentScans, rig_id: str = RIG_ID) -> None:
    """An inspection rig asking for masks of scans from the domain the rig is on now; it remembers what it
    sent, so the inspector can answer the server's review scans with their true masks."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = segmenter_pb2_grpc.SegmenterStub(channel)
        index = 0
        while not stop.is_set():
            if state.rig_domain:
                sample = generate_scan(state.rig_domain, 900_000_000 + index, size)
                sent.add(sample)
                request = segmenter_pb2.SegmentRequest(
                    scan_id=sample.scan_id, image=tensor_pb2.Image(tensor=array_to_tensor(sample.image)),
                    rig_id=rig_id)
                started = time.perf_counter()
                try:
                    response = await stub.Segment(request, timeout=10)
                    elapsed = (time.perf_counter() - started) * 1000
                    state.latencies_ms.append(elapsed)
                    state.all_latencies_ms.append(elapsed)
                    state.versions_seen.setdefault(response.model_version, time.time())
                    state.doubts.append(response.doubt)
                except grpc.aio.AioRpcError as err:
                    state.failures += 1
                    log.warning("request failed: %s", err.code().name)
                state.requests += 1
                index += 1
            await asyncio.sleep(1 / rate)


class ServedScores:
    """Per-domain validation mIoU of the version the server serves, next to the best any version reached.

    Read from the weight store's manifests (a version's scores are measured on whole held-out scans at
    native size, through the server's own preprocessing), cached by version since versions never change.
    """

    def __init__(self, store: WeightStore) -> None:
        self._store = store
        self._scores: dict[int, dict[str, float]] = {}

    def _of(self, version: int) -> dict[str, float]:
        if version not in self._scores:
            manifest = self._store.manifest(version)
            self._scores[version] = {d: s["miou"] for d, s in manifest.scores.items()}
        return self._scores[version]

    def table(self, served: int) -> dict[str, tuple[float | None, float]]:
        """domain -> (served version's mIoU or None, best mIoU of any published version)."""
        versions = [v for v in self._store.versions() if v > 0]
        best: dict[str, float] = {}
        for version in versions:
            for domain, miou in self._of(version).items():
                best[domain] = max(best.get(domain, 0.0), miou)
        now = self._of(served) if served in versions else {}
        return {domain: (now.get(domain), top) for domain, top in best.items()}


def summarise(cfg: DemoConfig, state: DemoState, store: WeightStore, learner_metrics: dict,
              served_version: int = 0) -> dict:
    versions = store.versions()
    manifests = [store.manifest(v) for v in versions]
    first_domain = cfg.domains[0]
    first_scores = [m.scores[first_domain]["miou"] for m in manifests if first_domain in m.scores]
    freshness = [
        seen - m.metrics["label_time_median"]
        for m in manifests
        if (seen := state.versions_seen.get(m.version)) and m.metrics.get("label_time_median")
    ]
    latencies = sorted(state.all_latencies_ms)
    steps = sum(v for _, v in learner_metrics.get("learner_steps_total", []))
    projections = sum(v for _, v in learner_metrics.get("learner_gem_projections_total", []))
    return {
        "domains": list(cfg.domains),
        "scans_produced": state.produced,
        "versions_published": len(versions),
        "latest_version": versions[-1] if versions else 0,
        "final_scores": manifests[-1].scores if manifests else {},
        "served_version": served_version,
        "served_miou_vs_best": {d: {"served": served, "best": best}
                                for d, (served, best) in ServedScores(store).table(served_version).items()},
        "first_domain": first_domain,
        "first_domain_best_miou": max(first_scores, default=0.0),
        "first_domain_final_miou": first_scores[-1] if first_scores else 0.0,
        "freshness_median_s": statistics.median(freshness) if freshness else None,
        "client_requests": state.requests,
        "client_failures": state.failures,
        "latency_p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "latency_p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None,
        "gem_steps": steps,
        "projection_share": projections / steps if steps else 0.0,
        "versions_seen_by_client": sorted(state.versions_seen),
        "labeled_from_review": state.labeled_from_review,
        "recent_doubt_mean": statistics.fmean(state.doubts) if state.doubts else None,
    }


async def run_demo(cfg: DemoConfig) -> dict:
    domains = cfg.domains or tuple(domain_names())
    cfg = DemoConfig(**{**cfg.__dict__, "domains": domains})
    if cfg.out.exists():
        shutil.rmtree(cfg.out)  # the embedded broker starts empty, so old checkpoints would not match it
    model_dir, logs = cfg.out / "models", cfg.out / "logs"
    broker = None
    if cfg.kafka is None:
        broker = EmbeddedBroker(free_port()).start()
    kafka = cfg.kafka or broker.bootstrap
    grpc_port, server_metrics, learner_metrics = free_port(), free_port(), free_port()
    server = Service("server", ["serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
                                "--grpc-port", str(grpc_port), "--metrics-port", str(server_metrics),
                                "--kafka", kafka, "--threads", "1", "--poll-interval", "5"], logs / "server.log")
    learner = Service("learner", ["learn", "--kafka", kafka, "--model-dir", str(model_dir),
                                  "--metrics-port", str(learner_metrics), "--threads", str(cfg.learner_threads),
                                  "--strategy", cfg.strategy, "--publish-every-steps", str(cfg.publish_every_steps),
                                  "--max-steps-per-scan", str(cfg.max_steps_per_scan),
                                  "--publish-every-s", "15", "--session-timeout-ms", "6000"], logs / "learner.log")
    console_service, console_port, login = _console(cfg, kafka, model_dir, grpc_port, server_metrics, logs)
    state = DemoState()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console = Console()
    started = time.monotonic()
    served = ServedScores(WeightStore(model_dir))
    served_version = 0
    try:
        server.start()
        learner.start()
        wait_ready(server, "127.0.0.1", grpc_port)
        wait_ready(learner, "127.0.0.1", learner_metrics)
        if console_service is not None:
            console_service.start()
            wait_ready(console_service, "127.0.0.1", console_port)
            console.print(login)

        def on_label(domain: str, from_review: bool) -> None:
            state.rig_domain = domain
            state.produced += 1
            state.labeled_from_review += int(from_review)

        schedule = Schedule.parse("sequential", list(domains), cfg.per_domain)
        sent = SentScans()
        waiting: asyncio.Queue = asyncio.Queue(256)
        review = asyncio.create_task(follow_review(kafka, waiting, stop) if cfg.simulated_inspector
                                     else stop.wait())
        rig = asyncio.create_task(inspect(kafka, schedule, cfg.rate, cfg.size, sent, waiting, stop, on_label))
        client = asyncio.create_task(call_server(f"127.0.0.1:{grpc_port}", state, cfg.client_rate, cfg.size, stop,
                                                 sent))
        live = Live(console=console, refresh_per_second=2) if cfg.live_view else None
        if live is not None:
            live.start()
        try:
            ticks = 0
            while not stop.is_set() and time.monotonic() - started < cfg.duration_s:
                server.check()
                learner.check()
                if console_service is not None:
                    console_service.check()
                for task in (rig, client, review):
                    if task.done() and task.exception() is not None:
                        raise task.exception()
                server_now = scrape(server_metrics)
                served_version = int(value(server_now, "inference_model_version"))
                view = render(state, scrape(learner_metrics), server_now, time.monotonic() - started,
                              cfg.duration_s, domains, served.table(served_version))
                if live is not None:
                    live.update(view)
                elif ticks % 15 == 0:
                    console.print(view)  # a snapshot every 15 s for logs without a terminal
                ticks += 1
                await asyncio.sleep(1.0)
        finally:
            if live is not None:
                live.stop()
        stop.set()
        await asyncio.gather(rig, client, review, return_exceptions=True)
        final_metrics = scrape(learner_metrics)
        served_version = int(value(scrape(server_metrics), "inference_model_version"))
    finally:
        stop.set()
        if console_service is not None:
            console_service.stop()
        learner.stop()
        server.stop()
        if broker is not None:
            broker.stop()
    summary = summarise(cfg, state, WeightStore(model_dir), final_metrics, served_version)
    if console_service is not None:
        summary["console_review_items"] = _review_counts(model_dir)
        print(login)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print_json(json.dumps(summary))
    return summary


def _console(cfg: DemoConfig, kafka: str, model_dir: Path, grpc_port: int, server_metrics: int,
             logs: Path) -> tuple[Service | None, int, str]:
    """The web console as a child process, and a line saying where it is and how to log in."""
    if cfg.console_port == 0:
        return None, 0, ""

    port = cfg.console_port
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:  # taken: any free port instead
            port = free_port()
    password = secrets.token_urlsafe(9)
    data_dir = cfg.out / "console"
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = data_dir / "demo-password"
    secret.write_text(password)
    secret.chmod(0o600)
    common = ["--data-dir", str(data_dir), "--model-dir", str(model_dir)]
    subprocess.run([sys.executable, "-m", "weldstream.cli", "console", "add-user", "demo", "--role", "operator",
                    "--password-file", str(secret), *common], check=True, capture_output=True, timeout=120)
    service = Service("console", ["console", "--http-port", str(port), "--kafka", kafka,
                                  "--server", f"127.0.0.1:{grpc_port}",
                                  "--server-metrics", f"http://127.0.0.1:{server_metrics}/metrics", *common],
                      logs / "console.log")
    return service, port, (f"web console: http://127.0.0.1:{port}  (log in as demo, password {password}; "
                     f"the review queue is at /review)")


def _review_counts(model_dir: Path) -> dict[str, int]:
    """How many review items the console queued, by state (read from the registry it keeps them in)."""
    from weldstream.registry import open_registry

    registry = open_registry("", model_dir)
    try:
        return {state: int(n) for state, n in registry.query("SELECT state, COUNT(*) FROM review_items GROUP BY state")}
    except Exception:  # the console never created its tables
        return {}
    finally:
        registry.close()
