"""weldstream's rows of the benchmark, run by the learner itself: ``ContinualLearner`` from ``learner/``.

Every weldstream strategy is the learner with only ``--strategy`` changed, so a row measures what a
plant would run: crops at the scans' native size (most on a defect), augmentation on the device, AdamW
with warm-up and an anneal as each domain's budget runs out, the reservoir memory, and the step
(``replay.gem_step``). Rows score the trained weights, not the average the learner publishes
(``learner.published``): each domain's budget ends annealed, and a short run's average lags its own
training (after 80 steps of a first domain it still finds nothing). Each domain gets exactly
``steps_per_domain`` steps; a step sees
``batch_size + rehearsal`` scans whatever the strategy (replay and replay-gem fill ``rehearsal`` of them
from memory, the others take as many more current scans).

- ``naive``, ``replay``, ``replay-gem``, ``gem``, ``agem``: the learner's window holds the current domain.
- ``joint-cumulative``: the window holds every domain so far, naive steps (an upper bound at each point).
- ``offline-joint``: the window holds every domain from the start and the whole budget
  (``steps_per_domain`` x domains) is spent i.i.d. over them: the ceiling at the same step budget. Its
  accuracy matrix rows are snapshots after each ``steps_per_domain`` steps, so only its last row (ACC)
  means what it means for the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from weldstream.bench.cl.config import BenchConfig
from weldstream.bench.cl.result import RunResult, record_baseline, record_row
from weldstream.bench.cl.stream import DomainSplit, Stream
from weldstream.bench.cl.timing import StepLog, StepTime
from weldstream.learner.config import LearnerConfig
from weldstream.learner.records import LabeledSample
from weldstream.learner.trainer import ContinualLearner
from weldstream.replay import StepConfig
from weldstream.replay.gem import REHEARSING
from weldstream.scoring import evaluate

STEP_STRATEGY = {"offline-joint": "naive", "joint-cumulative": "naive", "naive": "naive", "replay": "replay",
                 "replay-gem": "replay-gem", "gem": "gem", "agem": "agem"}
SETUPS = {
    "offline-joint": "the learner (naive steps) with every domain's train scans in its window from the start, "
                     "the whole budget i.i.d.: the ceiling",
    "joint-cumulative": "the learner (naive steps) whose window keeps every domain seen so far",
    "naive": "the learner, --strategy naive: the current domain only",
    "replay": "the learner, --strategy replay: current crops + memory crops of past domains, no projection",
    "replay-gem": "the learner's default, --strategy replay-gem: replay, plus GEM projection of the current "
                  "crops' gradient against each past domain whose probe loss has risen 50 % above its best",
    "gem": "the learner, --strategy gem: GEM projection against every past domain (round-robin references), "
           "no rehearsal",
    "agem": "the learner, --strategy agem: A-GEM projection against the average past-domain gradient",
}


def learner_config(name: str, cfg: BenchConfig, seed: int, window_scans: int) -> LearnerConfig:
    """The learner's defaults, with the benchmark's shared budget and sizes."""
    strategy = STEP_STRATEGY[name]
    rehearses = strategy in REHEARSING
    return LearnerConfig(
        model_dir=Path("unused"), seed=seed, device=cfg.device,
        batch_size=cfg.batch_size if rehearses else cfg.batch_size + cfg.rehearsal,
        learning_rate=cfg.learning_rate, memory_per_domain=cfg.memory_per_domain,
        window_scans=window_scans, window_mb=1 << 16,
        decay_steps=max(1, cfg.steps_per_domain // 3),
        settle_after_s=0,  # the benchmark sets every budget itself; wall time must not shrink it
        step=StepConfig(strategy=strategy, rehearsal=cfg.rehearsal if rehearses else 0,
                        memory_batch=cfg.memory_batch, clip_norm=cfg.clip_norm),
    )


def run_weldstream(name: str, cfg: BenchConfig, stream: Stream, seed: int,
                   progress: Callable[[int], None] = lambda n: None) -> tuple[RunResult, StepLog]:
    """Train ``name`` over the stream; fill the result's accuracy matrices and the step log."""
    everything = sum(len(d.x_train) for d in stream.domains)
    keeps_all = name in ("offline-joint", "joint-cumulative")
    window = everything if keeps_all else max(len(d.x_train) for d in stream.domains)
    learner = ContinualLearner(learner_config(name, cfg, seed, window), torch.device(cfg.device))
    result = RunResult(name, seed, stream.names, setup=SETUPS[name], guarded_steps=0, projected_steps=0)
    log = StepLog()
    record_baseline(result, learner.model, stream)
    if name == "offline-joint":
        for domain in stream.domains:
            _show(learner, domain)
        learner.budget = learner.steps + cfg.steps_per_domain * len(stream.domains)
    for i, domain in enumerate(stream.domains):
        if name == "offline-joint":
            _train(learner, i, cfg.steps_per_domain, log, progress, result)
        else:
            _show(learner, domain)
            learner.budget = learner.steps + cfg.steps_per_domain
            first = cfg.steps_per_domain * 3 // 4
            _train(learner, i, first, log, progress, result)
            before = _current_score(learner, domain, result)
            _train(learner, i, cfg.steps_per_domain - first, log, progress, result)
            result.plateau.append([before, _current_score(learner, domain, result)])
        record_row(result, learner.model, stream)
    return result, log


def _current_score(learner: ContinualLearner, domain: DomainSplit, result: RunResult) -> float:
    """The domain being learned, scored on its test scans (has its score stopped rising?)."""
    start = time.perf_counter()
    score = evaluate(learner.model, domain.x_test, domain.y_test).miou
    result.eval_s += time.perf_counter() - start
    return score


def _show(learner: ContinualLearner, domain: DomainSplit) -> None:
    """Hand the learner a domain's train scans, as the Kafka loop hands it decoded records."""
    for j in range(len(domain.x_train)):
        learner.add(LabeledSample(f"{domain.name}-{j}", domain.name, domain.x_train[j], domain.y_train[j], 0.0))
    learner.absorb()


def _train(learner: ContinualLearner, index: int, steps: int, log: StepLog, progress: Callable[[int], None],
           result: RunResult) -> None:
    taken = 0
    while taken < steps and learner.remaining() > 0:
        chunk = learner.train_for(min(16, steps - taken), max_seconds=1e9)
        for s in chunk:
            result.guarded_steps = (result.guarded_steps or 0) + int(s.guarded > 0)
            result.projected_steps = (result.projected_steps or 0) + int(s.projected)
            update = s.total_s - s.memory_s - s.forward_backward_s - s.projection_s
            log.add(StepTime(index, s.total_s, s.forward_backward_s, s.memory_s + s.projection_s, update))
        taken += len(chunk)
        progress(len(chunk))
