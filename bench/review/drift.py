"""The drift detector on served scans: false alarms on a stable rig, and delay to flag a switch of domain.

The served model (the review benchmark's base model, which learned the first domain) gives each scan
its pooled encoder summary (weldstream/features.py); the server's own ``DriftMonitor``
(server/drift.py) compares them with the reference the learner would store in the version's manifest
(the first domain's held-out scans) and runs its Page-Hinkley test. Measured: alarms over
``stable_scans`` scans of the learned domain, and, for each other simulator domain, how many scans after a
switch (preceded by ``switch_after`` scans of the learned domain) the first alarm comes, and whether
the drift score crossed the review threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weldstream.bench.review.config import ReviewBenchConfig
from weldstream.bench.review.labelling import render
from weldstream.features import REFERENCE_KEY, encoder_summary, reference_of, stage_channels
from weldstream.server.drift import DriftConfig, DriftMonitor
from weldstream.simulator import domain_names
from weldstream.weight_store import Manifest

STABLE_SEED, SWITCH_SEED, REFERENCE_SEED = 5_000_000, 6_000_000, 7_000_000


@dataclass
class Switch:
    domain: str
    flagged_after: int | None  # scans after the switch until the first drift event (None: never in the window)
    alarms_before: int  # events on the learned domain before the switch
    score_before: float
    score_after: float  # drift score at the end of the window
    review_after: int | None  # scans after the switch until the rig counts as drifting (its scans go to review)


@dataclass
class DriftResult:
    stable_scans: int
    false_alarms: int
    stable_max_score: float
    switches: list[Switch]


def _summaries(model: torch.nn.Module, domain: str, first: int, count: int, cfg: ReviewBenchConfig) -> torch.Tensor:
    return encoder_summary(model, render(domain, first, count, cfg.size).x, stride=32)


def _monitor(model: torch.nn.Module, cfg: ReviewBenchConfig) -> DriftMonitor:
    reference = _summaries(model, cfg.domains[0], REFERENCE_SEED, 64, cfg)
    manifest = Manifest(version=1, parent_version=0, sha256="", created_at=0.0, model_config={}, classes=[],
                        metrics={REFERENCE_KEY: {cfg.domains[0]: reference_of(reference, stage_channels(model))}})
    monitor = DriftMonitor(DriftConfig())
    monitor.follow(1, manifest, stage_channels(model))
    return monitor


def measure_drift(model: torch.nn.Module, cfg: ReviewBenchConfig) -> DriftResult:
    learned = cfg.domains[0]
    monitor = _monitor(model, cfg)
    readings = [monitor.observe("stable", f.numpy())
                for f in _summaries(model, learned, STABLE_SEED, cfg.stable_scans, cfg)]
    result = DriftResult(cfg.stable_scans, sum(r.event for r in readings), max(r.score for r in readings), [])
    unseen = [d for d in domain_names() if d != learned]  # every simulator domain the model has not learned
    for d, domain in enumerate(unseen, start=1):
        monitor = _monitor(model, cfg)
        before = [monitor.observe(domain, f.numpy())
                  for f in _summaries(model, learned, SWITCH_SEED + d * 10_000, cfg.switch_after, cfg)]
        after = [monitor.observe(domain, f.numpy())
                 for f in _summaries(model, domain, SWITCH_SEED + d * 10_000, cfg.switch_window, cfg)]
        result.switches.append(Switch(
            domain=domain,
            flagged_after=next((i + 1 for i, r in enumerate(after) if r.event), None),
            alarms_before=sum(r.event for r in before),
            score_before=before[-1].score,
            score_after=after[-1].score,
            review_after=next((i + 1 for i, r in enumerate(after) if r.drifting), None),
        ))
    return result
