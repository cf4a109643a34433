"""Promote or refuse a candidate: score it on every seen domain, compare with the live version, publish."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

import torch
from torch import nn

from weldstream.learner.config import LearnerConfig
from weldstream.learner.holdout import ValidationSets
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import build_model
from weldstream.scoring import SegmentationScore
from weldstream.weight_store import Manifest, WeightStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    scores: dict[str, SegmentationScore]
    live_scores: dict[str, SegmentationScore]
    regressions: dict[str, float] = field(default_factory=dict)  # domain -> mIoU drop beyond tolerance
    manifest: Manifest | None = None


class Publisher:
    """Keeps the live version's weights beside the learner so both are scored on the same scans."""

    def __init__(self, cfg: LearnerConfig, store: WeightStore, device: torch.device) -> None:
        self.cfg = cfg
        self.store = store
        self.device = device
        self.live_version = 0
        self._live_model: nn.Module = build_model(cfg.model, seed=cfg.seed).to(device).eval()
        self._live_scores: dict[str, SegmentationScore] = {}
        latest = store.latest()
        if latest is not None:
            stored = store.load(latest, map_location=device)
            self._live_model.load_state_dict(stored.state_dict)
            self.live_version = latest

    def _score_live(self, validation: ValidationSets) -> dict[str, SegmentationScore]:
        """Re-score the live version only on domains whose validation set changed since last time."""
        stale = [d for d in validation.domains()
                 if d not in self._live_scores or self._live_scores[d].samples != validation.size(d)]
        if stale:
            self._live_scores.update(validation.evaluate(self._live_model, self.device, stale))
        return dict(self._live_scores)

    def consider(self, learner: ContinualLearner, validation: ValidationSets,
                 offsets: list[dict[str, int | str]]) -> Decision:
        """Score the learner's model; publish it as a new version unless some domain regressed."""
        scores = validation.evaluate(learner.model, self.device)
        live_scores = self._score_live(validation)
        regressions = {
            domain: live_scores[domain].miou - score.miou
            for domain, score in scores.items()
            if domain in live_scores and score.miou < live_scores[domain].miou - self.cfg.regression_tolerance
        }
        if regressions:
            log.warning("refused candidate after step %d: regressed %s; scores %s", learner.steps,
                        {d: round(v, 4) for d, v in regressions.items()}, _brief(scores))
            return Decision(False, scores, live_scores, regressions)

        label_times = learner.label_times
        manifest = self.store.publish(
            learner.model.state_dict(), self.cfg.model,
            parent_version=self.live_version,
            strategy=self.cfg.step.strategy,
            offsets=offsets,
            scores={d: {"miou": s.miou, "dice": s.dice, "samples": s.samples} for d, s in scores.items()},
            metrics={
                "steps": learner.steps,
                "projected_steps": learner.projected_steps,
                "memory": learner.memory.per_domain(),
                "labels_learned": len(label_times),
                "label_time_median": statistics.median(label_times) if label_times else 0.0,
            },
            newest_label_at=max(label_times, default=0.0),
        )
        learner.label_times = []
        self.live_version = manifest.version
        self._live_model.load_state_dict(learner.model.state_dict())
        self._live_scores = dict(scores)
        log.info("published version %d (parent %d): %s", manifest.version, manifest.parent_version, _brief(scores))
        return Decision(True, scores, live_scores, {}, manifest)


def _brief(scores: dict[str, SegmentationScore]) -> dict[str, float]:
    return {d: round(s.miou, 4) for d, s in scores.items()}
