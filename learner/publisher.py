"""Promote or refuse a candidate: score it on every seen domain, compare with the live version, publish.

Both versions are scored scan by scan on the same held-out scans; a domain counts as regressed when the
candidate is lower by more than the tolerance and a paired bootstrap says the drop is not chance
(see regression.py).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from weldstream.learner.config import LearnerConfig
from weldstream.learner.holdout import ValidationSets
from weldstream.learner.regression import Comparison, compare
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import build_model
from weldstream.scoring import SegmentationScore, score_confusion
from weldstream.weight_store import Manifest, WeightStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    scores: dict[str, SegmentationScore]
    live_scores: dict[str, SegmentationScore]
    regressions: dict[str, Comparison] = field(default_factory=dict)  # domains that really dropped
    manifest: Manifest | None = None


class Publisher:
    """Keeps the live version's weights beside the learner so both are scored on the same scans."""

    def __init__(self, cfg: LearnerConfig, store: WeightStore, device: torch.device) -> None:
        self.cfg = cfg
        self.store = store
        self.device = device
        self.live_version = 0
        self._live_model: nn.Module = build_model(cfg.model, seed=cfg.seed).to(device).eval()
        self._live_scans: dict[str, tuple[int, np.ndarray]] = {}  # domain -> (validation revision, per scan)
        latest = store.latest()
        if latest is not None:
            stored = store.load(latest, map_location=device)
            self._live_model.load_state_dict(stored.state_dict)
            self.live_version = latest

    def _score_live(self, validation: ValidationSets) -> dict[str, np.ndarray]:
        """The live version's per-scan results, re-scored only on domains whose validation set changed."""
        stale = [d for d in validation.domains()
                 if d not in self._live_scans or self._live_scans[d][0] != validation.revision(d)]
        if stale:
            for domain, scans in validation.scan_confusions(self._live_model, self.device, stale).items():
                self._live_scans[domain] = (validation.revision(domain), scans)
        return {domain: scans for domain, (_, scans) in self._live_scans.items()}

    def consider(self, learner: ContinualLearner, validation: ValidationSets,
                 offsets: list[dict[str, int | str]]) -> Decision:
        """Score the learner's model; publish it as a new version unless some domain regressed."""
        candidate = validation.scan_confusions(learner.model, self.device)
        live = self._score_live(validation)
        scores, live_scores = _scores(candidate), _scores(live)
        comparisons = {domain: compare(live[domain], scans, seed=learner.steps)
                       for domain, scans in candidate.items() if domain in live}
        regressions = {domain: c for domain, c in comparisons.items()
                       if c.regressed(self.cfg.regression_tolerance, self.cfg.regression_confidence)}
        blind = [domain for domain, scans in candidate.items()
                 if domain in live and finds_defects(live[domain]) and not finds_defects(scans)]
        if blind:
            # mIoU cannot fall below 0, so the bootstrap never flags a model that has gone blind on a
            # domain whose live version still finds its defects; refuse that outright.
            log.warning("refused candidate after step %d: it finds no defect on %s, the live version does",
                        learner.steps, blind)
            return Decision(False, scores, live_scores, {d: comparisons[d] for d in blind})
        if regressions:
            log.warning("refused candidate after step %d: regressed %s; scores %s", learner.steps,
                        {d: f"-{c.drop:.4f} (confidence {c.confidence:.2f}, {c.samples} scans)"
                         for d, c in regressions.items()}, _brief(scores))
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
                "scans_learned": learner.scans_learned,
                "crop_size": learner.crop_size,
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
        self._live_scans = {domain: (validation.revision(domain), scans) for domain, scans in candidate.items()}
        log.info("published version %d (parent %d): %s", manifest.version, manifest.parent_version, _brief(scores))
        return Decision(True, scores, live_scores, {}, manifest)


def finds_defects(per_scan: np.ndarray) -> bool:
    """Whether a model's per-scan confusions (N, K, K) show any defect pixel predicted as a defect."""
    confusion = per_scan.sum(axis=0)
    return bool(confusion[1:, 1:].sum() > 0)


def _scores(scans: dict[str, np.ndarray]) -> dict[str, SegmentationScore]:
    return {domain: score_confusion(per_scan.sum(axis=0), len(per_scan)) for domain, per_scan in scans.items()}


def _brief(scores: dict[str, SegmentationScore]) -> dict[str, float]:
    return {d: round(s.miou, 4) for d, s in scores.items()}
