"""Avalanche's strategies on the same stream, model, optimiser and budget as weldstream's harness.

Each domain is one experience: an ``AvalancheDataset`` of (scan, mask) pairs with task label 0 on every
sample (without it Avalanche would read the mask as the task id), built by ``benchmark_from_datasets``.
The criterion is ``segmentation_loss``. Avalanche's own evaluation is switched off (its accuracy metric
assumes class labels); after each experience the shared ``score_stream`` scores the model.

Every step is timed by two plugins: ``_Stamp("head")`` runs first and ``_Stamp("tail")`` last at each
event, so the work Avalanche's plugins do inside an event (memory gradients, penalties, projections)
falls between them. The tail plugin also clips the gradient before the update, after any projection,
exactly where ``gem_step`` clips, so every strategy gets the same clip, and puts the model back in
train mode after the penalties (Avalanche's LFL leaves it in eval mode, see ``_Tail.before_backward``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import AGEM, GEM
from torch import Tensor, nn

from weldstream.bench.cl.config import BenchConfig
from weldstream.bench.cl.result import RunResult, record_baseline, record_row
from weldstream.bench.cl.stream import Stream
from weldstream.bench.cl.timing import StepLog, StepTime, now
from weldstream.learner.lfl_model import LFLSegmenter
from weldstream.learner.regularised import (
    REGULARISED,
    Strengths,
    experience_dataset,
    regularised_strategy,
    restore_train_mode,
)
from weldstream.learner.regularised import setup_line as regularised_setup_line
from weldstream.losses import segmentation_loss
from weldstream.model import ModelConfig, build_model

AVALANCHE_STRATEGIES = ("ewc", "si", "lfl", "avalanche-agem", "avalanche-gem")


def steps_sized(x: Tensor, y: Tensor, scans: int) -> tuple[Tensor, Tensor]:
    """The domain's train scans repeated (in order) to exactly ``scans``: one epoch over them is then
    exactly the shared step budget, as many steps as every other strategy takes."""
    repeats = -(-scans // len(x))
    return torch.cat([x] * repeats)[:scans], torch.cat([y] * repeats)[:scans]


def build_benchmark(stream: Stream, cfg: BenchConfig) -> Any:
    per_step = cfg.batch_size + cfg.rehearsal
    return benchmark_from_datasets(
        train=[experience_dataset(*steps_sized(d.x_train, d.y_train, cfg.steps_per_domain * per_step))
               for d in stream.domains],
        test=[experience_dataset(d.x_test, d.y_test) for d in stream.domains],
    )


def _strengths(cfg: BenchConfig) -> Strengths:
    return Strengths(ewc_lambda=cfg.ewc_lambda, si_lambda=cfg.si_lambda, si_eps=cfg.si_eps, lfl_lambda=cfg.lfl_lambda)


def agem_sample_size(cfg: BenchConfig, domains: int) -> int:
    """Avalanche's A-GEM draws ``sample_size // experiences`` patterns from each past experience's buffer
    (its loader is rebuilt after every experience, the last included), so fewer than one a domain would
    be a batch of 0 and a DataLoader error: at least one pattern per domain, else the shared memory_batch."""
    return max(cfg.memory_batch, domains)


def setup_line(name: str, cfg: BenchConfig, domains: int) -> str:
    if name in REGULARISED:
        return regularised_setup_line(name, _strengths(cfg))
    return {
        "avalanche-agem": f"avalanche AGEM(patterns_per_exp={cfg.memory_per_domain}, "
                          f"sample_size={agem_sample_size(cfg, domains)})",
        "avalanche-gem": f"avalanche GEM(patterns_per_exp={_gem_patterns(cfg)}, memory_strength={cfg.gem_margin}); "
                         f"fewer patterns than the {cfg.memory_per_domain} of the others, see avalanche_gem_patterns",
    }[name]


def build_strategy(name: str, cfg: BenchConfig, model: nn.Module, plugins: list[SupervisedPlugin],
                   domains: int) -> Any:
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    sizes: dict[str, Any] = dict(
        train_mb_size=cfg.batch_size + cfg.rehearsal,
        train_epochs=1,  # over the domain's scans repeated to exactly steps_per_domain batches
        eval_mb_size=cfg.batch_size,
        device=cfg.device,
        plugins=plugins,
    )
    if name in REGULARISED:
        return regularised_strategy(name, model, optimizer, _strengths(cfg), **sizes)
    common: dict[str, Any] = dict(model=model, optimizer=optimizer, criterion=segmentation_loss,
                                  evaluator=EvaluationPlugin(loggers=[]), **sizes)
    if name == "avalanche-agem":
        return AGEM(patterns_per_exp=cfg.memory_per_domain, sample_size=agem_sample_size(cfg, domains), **common)
    if name == "avalanche-gem":
        return GEM(patterns_per_exp=_gem_patterns(cfg), memory_strength=cfg.gem_margin, **common)
    raise ValueError(f"unknown Avalanche strategy {name!r}; choose one of {list(AVALANCHE_STRATEGIES)}")


def _gem_patterns(cfg: BenchConfig) -> int:
    return min(cfg.memory_per_domain, cfg.avalanche_gem_patterns)


class _Stamp(SupervisedPlugin):
    """Writes the time each training event is reached into a shared dict under ``<event>:<role>``."""

    def __init__(self, role: str, marks: dict[str, float]) -> None:
        super().__init__()
        self.role, self.marks = role, marks

    def _mark(self, event: str) -> None:
        self.marks[f"{event}:{self.role}"] = now()

    def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("bti")

    def before_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("bf")

    def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("af")

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("bb")

    def after_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("ab")

    def before_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("bu")

    def after_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("au")

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("ati")


class _Tail(_Stamp):
    """The last plugin: clips before the update and turns the marks of one iteration into a StepTime."""

    def __init__(self, marks: dict[str, float], log: StepLog, clip_norm: float | None,
                 progress: Callable[[int], None]) -> None:
        super().__init__("tail", marks)
        self.log, self.clip_norm, self.progress = log, clip_norm, progress
        self.domain = 0

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        restore_train_mode(strategy)
        self._mark("bb")

    def before_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("bu")  # the update phase (clip + optimizer.step) starts here
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), self.clip_norm)

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._mark("ati")
        m = self.marks
        forward_backward = (m["af:head"] - m["bf:tail"]) + (m["bb:head"] - m["af:tail"]) + (m["ab:head"] - m["bb:tail"])
        update = m["au:head"] - m["bu:tail"]
        total = m["ati:tail"] - m["bti:head"]
        self.log.add(StepTime(self.domain, total, forward_backward, total - forward_backward - update, update))
        self.progress(1)


def run_avalanche(name: str, cfg: BenchConfig, stream: Stream, seed: int,
                  progress: Callable[[int], None] = lambda n: None) -> tuple[RunResult, StepLog]:
    """Train Avalanche strategy ``name`` over the stream; fill the accuracy matrices and the step log."""
    # The plain network: nothing in Avalanche's strategies teaches a polarity head (weldstream.polarity).
    model: nn.Module = build_model(ModelConfig(polarity=False), seed=seed)
    if name == "lfl":
        model = LFLSegmenter(model)
    torch.manual_seed(seed)  # Avalanche's data loaders and memory sampling draw from the global generator
    marks: dict[str, float] = {}
    log = StepLog()
    tail = _Tail(marks, log, cfg.clip_norm, progress)
    strategy = build_strategy(name, cfg, model, [_Stamp("head", marks)], len(stream.names))
    strategy.plugins.append(tail)  # after the strategy's own plugins, the evaluator and the clock
    result = RunResult(name, seed, stream.names, setup=setup_line(name, cfg, len(stream.names)))
    record_baseline(result, strategy.model, stream)
    benchmark = build_benchmark(stream, cfg)
    for i, experience in enumerate(benchmark.train_stream):
        tail.domain = i
        strategy.train(experience, num_workers=0, drop_last=True)  # full batches only, as in the harness
        record_row(result, strategy.model, stream)
    return result, log
