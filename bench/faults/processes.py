"""Starting, waiting for and killing the suite's real processes: embedded broker, learner, server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CLI = [sys.executable, "-m", "weldstream.cli", "--log-level", "WARNING"]


class FaultTimeout(AssertionError):
    pass


def start_learner(kafka: str, model_dir: Path, log: Path, *extra: str, metrics_port: int = -1) -> subprocess.Popen:
    """A small, fast learner (64-px crops, one thread) that checkpoints and publishes every second."""
    args = [*CLI, "learn", "--kafka", kafka, "--model-dir", str(model_dir), "--metrics-port", str(metrics_port),
            "--metrics-host", "127.0.0.1",
            "--crop-size", "64", "--batch-size", "4", "--memory-per-domain", "16", "--memory-batch", "2",
            "--publish-every-steps", "3", "--publish-every-s", "1", "--session-timeout-ms", "2000",
            "--threads", "1", "--regression-tolerance", "1.0", *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115


def start_server(model_dir: Path, port: int, metrics_port: int, log: Path, *extra: str) -> subprocess.Popen:
    args = [*CLI, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--grpc-port", str(port),
            "--metrics-port", str(metrics_port), "--kafka", "", "--poll-interval", "0.3", "--threads", "1", *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115


def stop(process: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2) -> float:
    """Seconds it took for `predicate` to hold; FaultTimeout after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise FaultTimeout(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(every_s)
    return time.monotonic() - started


def is_live(metrics_port: int) -> bool:
    """The learner's /healthz says its loop is making progress."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def served_version(metrics_port: int) -> float:
    """The version a server serves, or -1 while its /metrics does not answer yet (it is still starting)."""
    try:
        return scrape(metrics_port)[("inference_model_version", ())]
    except OSError:
        return -1.0


def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on a /metrics page: (name, sorted labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def tail(log: Path, chars: int = 1500) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""
