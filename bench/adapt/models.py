"""The served versions: the learner's own (``ContinualLearner``) trained on one source domain each, published
into a directory weight store as the learner publishes, with the source's held-out feature reference that the
server measures drift against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from weldstream.features import REFERENCE_KEY, encoder_summary, reference_of, stage_channels
from weldstream.gain_curve import PROFILE_KEY, as_state, mean_profile
from weldstream.learner.config import LearnerConfig
from weldstream.learner.records import LabeledSample
from weldstream.learner.trainer import ContinualLearner
from weldstream.preprocess import training_pair
from weldstream.replay import StepConfig
from weldstream.scoring import evaluate
from weldstream.simulator import generate_scan
from weldstream.weight_store import Manifest, WeightStore

# Seed ranges: training, the held-out reference of the version, adaptation scans and test scans never overlap.
TRAIN_SEED, REFERENCE_SEED = 1_000_000, 2_000_000


@dataclass
class Trained:
    source: str
    model: torch.nn.Module  # the published weights, eval mode
    manifest: Manifest
    steps: int
    validation_miou: float
    learner: ContinualLearner  # where the version came from: its memory and optimiser go on in the label rows


def labeled(domain: str, first: int, count: int, size: tuple[int, int]) -> list[LabeledSample]:
    """Simulator scans as the learner decodes them (normalised as the server normalises)."""
    samples = []
    for i in range(count):
        scan = generate_scan(domain, first + i, size)
        x, y = training_pair(scan.image, scan.mask)
        samples.append(LabeledSample(scan.scan_id, domain, x, y, 0.0))
    return samples


def learner_config(steps: int, train_scans: int, crop_size: int, seed: int) -> LearnerConfig:
    return LearnerConfig(model_dir=Path("unused"), device="cpu", seed=seed, window_scans=train_scans,
                         crop_size=crop_size,
                         memory_per_domain=32, decay_steps=max(1, min(400, steps)),
                         settle_after_s=0,  # the benchmark sets the budget itself
                         warmup_steps=max(1, min(30, steps // 10)), step=StepConfig())


def train_and_publish(source: str, store_dir: Path, steps: int, train_scans: int, size: tuple[int, int],
                      reference_scans: int, crop_size: int = 0, seed: int = 0) -> Trained:
    """``steps`` learner steps on ``train_scans`` labeled scans of ``source``, published as version 1."""
    learner = ContinualLearner(learner_config(steps, train_scans, crop_size, seed), torch.device("cpu"))
    for sample in labeled(source, TRAIN_SEED, train_scans, size):
        learner.add(sample)
    learner.absorb()
    learner.budget = learner.steps + steps
    while learner.remaining() > 0:
        learner.train_for(32, max_seconds=1e9)
    model = learner.published.eval()
    held_out = labeled(source, REFERENCE_SEED, reference_scans, size)
    x = torch.stack([s.x for s in held_out])
    y = torch.stack([s.y for s in held_out])
    stride = learner.cfg.model.stride
    score = evaluate(model, x, y)
    reference = {**reference_of(encoder_summary(model, x, stride), stage_channels(model)),
                 PROFILE_KEY: as_state(mean_profile([x]))}  # as the learner's publisher writes it
    store = WeightStore(store_dir)
    manifest = store.publish(model.state_dict(), learner.cfg.model, parent_version=0,
                             strategy=learner.cfg.step.strategy,
                             scores={source: {"miou": score.miou, "dice": score.dice, "samples": score.samples}},
                             metrics={"steps": learner.steps, "crop_size": learner.crop_size,
                                      REFERENCE_KEY: {source: reference}})
    return Trained(source, model, manifest, learner.steps, score.miou, learner)
