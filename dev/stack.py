"""Run the services as child processes, the way an operator would: start in order, stop in reverse."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from weldstream.dev.broker import wait_for_port

log = logging.getLogger(__name__)


@dataclass
class Service:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # WELDSTREAM_* settings on top of this process's environment
    cwd: Path | None = None  # working directory (None: this process's), where relative defaults resolve
    process: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "weldstream.cli", *self.args], stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, **self.env}, cwd=self.cwd)
        log.info("started %s (pid %d), log %s", self.name, self.process.pid, self.log_path)
        return self

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.process.returncode}; see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful: drain, checkpoint, commit), SIGKILL only if it does not finish in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
        return self.process.returncode


def wait_ready(service: Service, host: str, port: int, timeout_s: float = 120.0) -> None:
    try:
        wait_for_port(host, port, timeout_s)
    except TimeoutError:
        service.check()
        raise


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text from /metrics -> {sample name: [(labels, value), …]}; empty if unreachable."""
    try:
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict, name: str, default: float = 0.0, **labels: str) -> float:
    for sample_labels, sample_value in samples.get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return default
