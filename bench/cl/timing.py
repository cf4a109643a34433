"""Per-step wall time split into phases, and the process's peak resident memory.

Every strategy's step is cut into the same three phases so the table compares like with like:
  forward/backward  the current batch's forward pass, loss and backward pass;
  memory/projection everything a continual-learning method adds: memory gradients, projections,
                    regularisation penalties, extra forwards through a frozen copy, bookkeeping;
  update            gradient clipping and ``optimizer.step()``.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class StepTime:
    domain: int  # index of the domain being trained
    total_s: float
    forward_backward_s: float
    memory_s: float  # memory + projection + regulariser overhead
    update_s: float


class StepLog:
    """All timed steps of one run; summaries per domain and overall, in milliseconds."""

    def __init__(self) -> None:
        self.steps: list[StepTime] = []

    def add(self, step: StepTime) -> None:
        self.steps.append(step)

    def summary(self, steps: list[StepTime] | None = None) -> dict[str, float]:
        steps = self.steps if steps is None else steps
        if not steps:
            return {"steps": 0, "total_ms": float("nan"), "forward_backward_ms": float("nan"),
                    "memory_ms": float("nan"), "update_ms": float("nan")}
        return {
            "steps": len(steps),
            "total_ms": 1e3 * statistics.fmean(s.total_s for s in steps),
            "forward_backward_ms": 1e3 * statistics.fmean(s.forward_backward_s for s in steps),
            "memory_ms": 1e3 * statistics.fmean(s.memory_s for s in steps),
            "update_ms": 1e3 * statistics.fmean(s.update_s for s in steps),
        }

    def per_domain(self, domains: int) -> list[dict[str, float]]:
        return [self.summary([s for s in self.steps if s.domain == d]) for d in range(domains)]


class PeakRSS:
    """High-water mark of this process's resident set: a sampling thread plus the kernel's ru_maxrss.

    Each strategy runs in its own worker process, so the figure belongs to that strategy alone (plus
    the interpreter, torch and, for Avalanche strategies, Avalanche's imports; ``start_mb`` records
    the resident set before training so the growth is visible).
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._peak = 0
        self.start_mb = self._process.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    @property
    def peak_mb(self) -> float:
        kernel = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        return max(self._peak, kernel) / 2**20


def now() -> float:
    return time.perf_counter()
