"""Review-first vs random labelling on a drifting stream, with the learner itself (``ContinualLearner``).

Per seed: the served model has learned the first domain. Each new domain then arrives as rounds; in a
round the rig sends ``served_per_round`` scans, the server answers them (computing their doubt exactly
as it does for a rig, server/doubt.py), and inspectors label ``round_labels`` of them:

- ``review-first``: the most doubted scans, which is what ``weld.scans.review`` surfaces first;
- ``random``: a random choice among the served scans.

The labels go to the learner as decoded records, it takes ``steps_per_round`` steps, and the served
mIoU on the domain's held-out test scans (whole scans, the server's preprocessing) is recorded after
every round. Both strategies start each seed from the same trained model and see the same
served scans in the same order, so the only difference is which scans were labeled.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weldstream.bench.review.config import ORACLE, ReviewBenchConfig
from weldstream.learner.config import LearnerConfig
from weldstream.learner.records import LabeledSample
from weldstream.learner.trainer import ContinualLearner
from weldstream.preprocess import training_pair
from weldstream.replay import StepConfig
from weldstream.scoring import evaluate
from weldstream.server.doubt import scan_doubt
from weldstream.simulator import generate_scan
from weldstream.tiles import segment_maps

BASE_SEED, STREAM_SEED, TEST_SEED = 1_000_000, 3_000_000, 9_000_000


@dataclass
class Scans:
    """x (N, 1, H, W) normalised, y (N, H, W) uint8 class maps."""

    x: torch.Tensor
    y: torch.Tensor


def render(domain: str, first: int, count: int, size: tuple[int, int]) -> Scans:
    pairs = [training_pair(s.image, s.mask, size) for s in (generate_scan(domain, first + i, size)
                                                             for i in range(count))]
    return Scans(torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs]))


@dataclass
class Curve:
    """Served mIoU on one new domain after 0, round_labels, 2 x round_labels ... labels."""

    strategy: str
    seed: int
    domain: str
    labels: list[int] = field(default_factory=list)
    miou: list[float] = field(default_factory=list)
    mean_doubt_labeled: list[float] = field(default_factory=list)
    test_doubt: list[float] = field(default_factory=list)  # mean doubt of the test scans after each round


def learner_config(cfg: ReviewBenchConfig, seed: int) -> LearnerConfig:
    return LearnerConfig(
        model_dir=Path("unused"), seed=seed, device=cfg.device, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, crop_size=cfg.crop_size, memory_per_domain=64,
        window_scans=max(cfg.base_scans, cfg.labels_per_domain), warmup_steps=10,
        decay_steps=max(1, cfg.steps_per_round),
        settle_after_s=0,  # the benchmark sets every budget itself; wall time must not shrink it
        # Every round anneals to a settled model within its few dozen steps, so the served weights are
        # the trained ones (an average over 20 steps would still carry the previous round's).
        average_half_life=0,
        step=StepConfig(strategy="replay", rehearsal=cfg.rehearsal, memory_batch=4, clip_norm=1.0),
    )


def train_base(cfg: ReviewBenchConfig, seed: int) -> ContinualLearner:
    """The served model before the drift: the learner after ``base_steps`` steps on the first domain."""
    learner = ContinualLearner(learner_config(cfg, seed), torch.device(cfg.device))
    base = render(cfg.domains[0], BASE_SEED + seed * 10_000, cfg.base_scans, cfg.size)
    for j in range(len(base.x)):
        learner.add(LabeledSample(f"base-{j}", cfg.domains[0], base.x[j], base.y[j], 0.0))
    learner.absorb()
    learner.budget = learner.steps + cfg.base_steps
    while learner.remaining() > 0:
        learner.train_for(16, max_seconds=1e9)
    return learner


@torch.inference_mode()
def served_doubt(model: torch.nn.Module, x: torch.Tensor, stride: int = 32) -> torch.Tensor:
    """Each scan's doubt as the server computes it for a rig."""
    was_training = model.training
    model.eval()
    entropy = segment_maps(model, x, stride, with_entropy=True).entropy
    model.train(was_training)
    assert entropy is not None
    return scan_doubt(entropy)


def pick(strategy: str, doubts: torch.Tensor, count: int, rng: random.Random,
         defect_pixels: torch.Tensor | None = None) -> list[int]:
    """The served scans the inspectors label: most doubted, random, or (the oracle) most true defect pixels."""
    if strategy == "review-first":
        return doubts.argsort(descending=True)[:count].tolist()
    if strategy == ORACLE:
        assert defect_pixels is not None, "the oracle ranks by the true masks"
        return defect_pixels.argsort(descending=True, stable=True)[:count].tolist()
    return rng.sample(range(len(doubts)), count)


def run_strategy(strategy: str, learner: ContinualLearner, cfg: ReviewBenchConfig, seed: int,
                 progress: Callable[[str], None] = lambda s: None) -> list[Curve]:
    """Label each new domain with ``strategy``; the learner is the trained base model's copy."""
    rng = random.Random(seed)
    curves = []
    for d, domain in enumerate(cfg.domains[1:], start=1):
        test = render(domain, TEST_SEED + d * 10_000, cfg.test_per_domain, cfg.size)
        curve = Curve(strategy, seed, domain)
        curve.labels.append(0)
        curve.miou.append(evaluate(learner.published, test.x, test.y).miou)
        curve.test_doubt.append(float(served_doubt(learner.published, test.x).mean()))
        for r in range(cfg.rounds):
            first = STREAM_SEED + seed * 100_000 + d * 10_000 + r * cfg.served_per_round
            served = render(domain, first, cfg.served_per_round, cfg.size)
            doubts = served_doubt(learner.published, served.x)
            chosen = pick(strategy, doubts, cfg.round_labels, rng, (served.y > 0).sum(dim=(1, 2)))
            for i in chosen:
                learner.add(LabeledSample(f"{domain}-{r}-{i}", domain, served.x[i], served.y[i], 0.0))
            learner.absorb()
            learner.budget = learner.steps + cfg.steps_per_round
            while learner.remaining() > 0:
                learner.train_for(16, max_seconds=1e9)
            curve.labels.append((r + 1) * cfg.round_labels)
            curve.miou.append(evaluate(learner.published, test.x, test.y).miou)
            curve.test_doubt.append(float(served_doubt(learner.published, test.x).mean()))
            curve.mean_doubt_labeled.append(float(doubts[chosen].mean()))
            progress(f"{strategy} seed {seed} {domain}: {curve.labels[-1]} labels, mIoU {curve.miou[-1]:.3f}")
        curves.append(curve)
    return curves


def run_seed(cfg: ReviewBenchConfig, seed: int, progress: Callable[[str], None] = lambda s: None
             ) -> tuple[list[Curve], ContinualLearner]:
    """Both strategies from the seed's trained base model; returns their curves and the base model."""
    base = train_base(cfg, seed)
    progress(f"seed {seed}: base model trained on {cfg.domains[0]} ({base.steps} steps)")
    curves = []
    for strategy in cfg.strategies:
        curves += run_strategy(strategy, copy.deepcopy(base), cfg, seed, progress)
    return curves, base
