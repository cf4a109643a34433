"""What one (strategy, seed) run produces, and the evaluation every strategy shares."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from weldstream.bench.cl.stream import Stream
from weldstream.scoring import evaluate


@dataclass
class RunResult:
    """Accuracy matrices are R[i][j]: score on domain j's test set after training on domain i, in [0, 1]."""

    strategy: str
    seed: int
    domains: list[str]
    miou: list[list[float]] = field(default_factory=list)
    dice: list[list[float]] = field(default_factory=list)
    baseline_miou: list[float] = field(default_factory=list)  # randomly initialised model, per domain
    baseline_dice: list[float] = field(default_factory=list)
    step_ms: dict[str, float] = field(default_factory=dict)  # over the whole stream
    step_ms_per_domain: list[dict[str, float]] = field(default_factory=list)
    peak_rss_mb: float = float("nan")
    start_rss_mb: float = float("nan")
    train_s: float = 0.0  # training only: the evaluations after each domain are in eval_s
    eval_s: float = 0.0
    wall_s: float = 0.0
    setup: str = ""  # how the strategy was built, in one line
    # Per domain: the current domain's test mIoU after 3/4 of its steps and after all of them (has it
    # plateaued?); empty where not recorded (offline-joint, Avalanche's rows).
    plateau: list[list[float]] = field(default_factory=list)
    # replay-gem: steps taken while measured forgetting had switched projection on; steps whose gradient was
    # projected. None where not counted (Avalanche's rows, runs made before the counts existed).
    guarded_steps: int | None = None
    projected_steps: int | None = None
    error: str | None = None  # traceback summary when the run failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(**data)


@torch.no_grad()
def score_stream(model: nn.Module, stream: Stream, batch_size: int = 32) -> tuple[list[float], list[float]]:
    """mIoU and Dice over defect classes on every domain's test set, in stream order."""
    scores = [evaluate(model, d.x_test, d.y_test, batch_size=batch_size) for d in stream.domains]
    return [s.miou for s in scores], [s.dice for s in scores]


def record_row(result: RunResult, model: nn.Module, stream: Stream) -> None:
    """Append one row of both accuracy matrices (called after each domain)."""
    start = time.perf_counter()
    miou, dice = score_stream(model, stream)
    result.miou.append(miou)
    result.dice.append(dice)
    result.eval_s += time.perf_counter() - start


def record_baseline(result: RunResult, model: nn.Module, stream: Stream) -> None:
    start = time.perf_counter()
    result.baseline_miou, result.baseline_dice = score_stream(model, stream)
    result.eval_s += time.perf_counter() - start
