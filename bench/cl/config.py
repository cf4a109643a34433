"""The benchmark's one configuration: stream sizes, the shared training budget and each method's knobs.

Every strategy reads the same model seed, optimiser, learning rate, batch size, epochs, gradient clip
and per-domain memory budget from here, so a difference in the table is a difference in the method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Canonical row order of the report. "offline-joint" is the ceiling, "naive" the floor; "replay-gem" is the
# learner's default strategy, and every weldstream row runs the learner itself.
STRATEGIES: tuple[str, ...] = (
    "offline-joint",
    "joint-cumulative",
    "naive",
    "replay",
    "replay-gem",
    "gem",
    "agem",
    "ewc",
    "si",
    "lfl",
    "avalanche-agem",
    "avalanche-gem",
)
DEFAULT_STRATEGY = "replay-gem"
CEILING = "offline-joint"
LEARNER_STRATEGIES = ("offline-joint", "joint-cumulative", "naive", "replay", "replay-gem", "gem", "agem")
# Rows that are not continual-learning methods under a memory budget (they keep every scan): they bound
# the others and are never "the best row".
BOUNDS = ("offline-joint", "joint-cumulative")
# Two regimes. step-bound: every strategy is limited by optimiser steps (150 a domain), where rehearsal wins
# by training old domains further. long: each domain gets 4x the steps, so a domain's own score has
# plateaued before the next one comes and what separates strategies is what they forget.
REGIMES = {"step-bound": 150, "long": 600}
LONG_STRATEGIES = ("naive", "replay", "replay-gem")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and hyper-parameters of one benchmark run (one value per knob, shared by every strategy)."""

    train_per_domain: int = 600
    test_per_domain: int = 64
    size: tuple[int, int] = (64, 64)  # scans are rendered at this size and learned at it (native)
    seeds: tuple[int, ...] = (0, 1, 2)
    # The one training budget: every strategy takes this many optimiser steps per domain (offline-joint
    # takes the same total, i.i.d. over every domain), each on batch_size + rehearsal scans.
    steps_per_domain: int = 150
    batch_size: int = 8  # the current domain's scans per step
    rehearsal: int = 8  # memory scans per step for replay and replay-gem; others take as many more current scans
    learning_rate: float = 2e-3  # AdamW, the learner's default, for every strategy
    clip_norm: float | None = 1.0  # applied to every strategy, after any projection, before the update
    memory_per_domain: int = 100  # episodic memory budget, scans per domain, for every memory-based method
    memory_batch: int = 4  # scans per reference gradient (GEM per past domain; A-GEM in total)
    # Avalanche's GEM takes a gradient over every stored pattern of every past domain at every step: at
    # 100 a domain its step grows to seconds by the sixth domain on 2 CPU cores, so it keeps this many.
    avalanche_gem_patterns: int = 32
    device: str = "cpu"
    # Regularisation strengths: ContinualAI's continual-learning-baselines values (permuted MNIST), untuned here.
    ewc_lambda: float = 1.0
    si_lambda: float = 0.1
    si_eps: float = 0.1
    lfl_lambda: float = 1e-4
    gem_margin: float = 0.5  # GEM's memory_strength, the same for Avalanche's and weldstream's GEM
    strategies: tuple[str, ...] = STRATEGIES
    data: Path | None = None  # a folder dataset instead of the simulator
    test_share: float = 0.2  # share of a folder dataset's scans per domain held out (by scan-id hash)
    domains: tuple[str, ...] | None = None  # simulator domains to use (canonical order kept); None = all
    max_domains: int | None = None  # keep only the first N domains of the stream
    parallel: int = 1  # worker processes at once (>1: step times share the cores; ACC counts steps, not time)
    # Avalanche's rows run on the first N seeds only (None: every seed), when the full run must fit its time.
    avalanche_seeds: int | None = None
    threads: int = 2
    quick: bool = False
    regime: str = "step-bound"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
        if self.train_per_domain < self.batch_size + self.rehearsal or self.test_per_domain < 1:
            raise ValueError("train_per_domain must hold a batch and test_per_domain must be >= 1")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if min(self.size) < 32:
            raise ValueError("size must be at least 32 x 32")
        if self.memory_per_domain < 1 or self.memory_batch < 1 or self.steps_per_domain < 1:
            raise ValueError("memory_per_domain, memory_batch and steps_per_domain must be >= 1")
        if self.avalanche_seeds is not None and self.avalanche_seeds < 1:
            raise ValueError(f"avalanche_seeds must be >= 1, got {self.avalanche_seeds}")
        if self.parallel < 1 or self.threads < 1:
            raise ValueError("parallel and threads must be >= 1")
        if not 0 < self.test_share < 1:
            raise ValueError("test_share must be in (0, 1)")
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose from {list(REGIMES)}")

    @classmethod
    def quick_preset(cls, **overrides: Any) -> BenchConfig:
        """A minutes-long run: two domains (one ultrasonic, one X-ray, so forgetting shows), small splits,
        one seed, two workers at a time with one thread each; checks the pipeline, not the science."""
        base: dict[str, Any] = dict(
            train_per_domain=128, test_per_domain=16, seeds=(0,), steps_per_domain=80, memory_per_domain=32,
            domains=("ut-pe100-5mhz", "xray-film-steel-x52"), threads=1, parallel=2, quick=True,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def long_preset(cls, **overrides: Any) -> BenchConfig:
        """The forgetting-bound regime: 4x the steps a domain, on the rows that decide the default (the floor,
        the baseline, the default); add others with --strategies, the finished runs are kept."""
        base: dict[str, Any] = dict(regime="long", steps_per_domain=REGIMES["long"], strategies=LONG_STRATEGIES,
                                    seeds=tuple(range(5)))
        base.update(overrides)
        return cls(**base)

    def reuse_key(self) -> dict[str, Any]:
        """What a stored run must share with this configuration to be reused: everything but which rows and
        seeds run, and how many at once (those change only the time it takes)."""
        data = self.to_dict()
        for key in ("seeds", "strategies", "parallel", "threads", "avalanche_seeds", "extra"):
            data.pop(key)
        return data

    def seeds_of(self, strategy: str) -> tuple[int, ...]:
        """The seeds a strategy runs on: all of them, or the first ``avalanche_seeds`` for Avalanche's rows."""
        if strategy in LEARNER_STRATEGIES or self.avalanche_seeds is None:
            return self.seeds
        return self.seeds[: self.avalanche_seeds]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["data"] = None if self.data is None else str(self.data)
        data["size"] = list(self.size)
        data["seeds"], data["strategies"] = list(self.seeds), list(self.strategies)
        data["domains"] = None if self.domains is None else list(self.domains)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        data = dict(data)
        data["data"] = None if data.get("data") is None else Path(data["data"])
        for key in ("size", "seeds", "strategies", "domains"):
            data[key] = None if data.get(key) is None else tuple(data[key])
        return cls(**data)
