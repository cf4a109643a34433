"""Promote or refuse a candidate: score it on every seen domain, compare with the live version, publish.

Both versions are scored scan by scan on the same held-out scans; a domain counts as regressed when the
candidate is lower by more than the tolerance and a paired bootstrap says the drop is not chance
(see regression.py).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from weldstream.errors import CorruptVersion
from weldstream.features import REFERENCE_KEY, reference_of, stage_channels
from weldstream.gain_curve import PROFILE_KEY, as_state
from weldstream.learner.config import LearnerConfig
from weldstream.learner.holdout import ValidationSets
from weldstream.learner.regression import Comparison, compare
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import build_model
from weldstream.polarity import POLARITY_KEY, load_weights
from weldstream.scoring import SegmentationScore, score_confusion
from weldstream.stores import VersionStore
from weldstream.weight_store import Manifest

log = logging.getLogger(__name__)
# Versions from an offline consolidation job carry this strategy prefix; the online learner adopts them.
CONSOLIDATED = "consolidate-"
# The served version counts as finding a domain's defects only from this mIoU up: below it its marks are
# noise (an early version paints scattered pixels as defects), and a candidate that marks none is judged
# by its score alone, like any other.
FINDS_DEFECTS_MIOU = 0.05


@dataclass(frozen=True)
class Decision:
    promoted: bool
    scores: dict[str, SegmentationScore]
    live_scores: dict[str, SegmentationScore]
    regressions: dict[str, Comparison] = field(default_factory=dict)  # domains that really dropped
    manifest: Manifest | None = None
    compared_with: int = 0  # the served version the candidate was judged against
    candidate_scans: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # The same pass's pooled encoder features per domain (N, C): the drift reference a published version carries.
    candidate_features: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    reason: str = ""  # why it was refused


class Publisher:
    """Keeps the served version's weights beside the trainer so both are scored on the same scans.

    Two version numbers matter: ``live_version`` is what the servers serve now (the newest version, or
    an operator's pin), which every candidate is compared with; ``parent_version`` is what the trainer's
    weights descend from (its last published or adopted version), which a new version names as its parent.
    They differ only while a pin holds the servers on an older version.
    """

    def __init__(self, cfg: LearnerConfig, store: VersionStore, device: torch.device) -> None:
        self.cfg = cfg
        self.store = store
        self.device = device
        self.live_version = 0
        self.parent_version = store.latest() or 0
        self._live_model: nn.Module = build_model(cfg.model, seed=cfg.seed).to(device).eval()
        self._live_scans: dict[str, tuple[int, np.ndarray]] = {}  # domain -> (validation revision, per scan)
        # The live version's result on each held-out scan, by entry (see ValidationSets.entries): a changed
        # set costs the live version only its new scans.
        self._live_by_entry: dict[int, tuple[object, np.ndarray]] = {}
        # With --regression-baseline best: per domain, the best served version's results on its held-out scans.
        self._best_scans: dict[str, tuple[int, np.ndarray]] = {}
        self.follow_served()

    def follow_served(self) -> bool:
        """Compare candidates with what the servers serve now (a pin, rollback or another trainer's
        version changes it); True if the baseline changed."""
        served = self.store.served()
        if served is None or served == self.live_version:
            return False
        try:
            stored = self.store.load(served, map_location=self.device)
        except (CorruptVersion, FileNotFoundError) as exc:
            log.error("cannot compare with served version %d (%s); keeping version %d", served, exc,
                      self.live_version)
            return False
        load_weights(self._live_model, stored.state_dict)
        self.live_version = served
        self._live_scans = {}
        self._live_by_entry = {}
        self._best_scans = {}  # an operator's pin or rollback, or another trainer's version: the bar restarts
        log.info("candidates are compared with served version %d from now on", served)
        return True

    def _score_live(self, validation: ValidationSets) -> dict[str, np.ndarray]:
        """The live version's per-scan results; where a domain's set changed, only the scans it has not
        scored yet are scored (the others' results are kept by entry)."""
        stride = self.cfg.model.stride
        for domain in validation.domains():
            if domain in self._live_scans and self._live_scans[domain][0] == validation.revision(domain):
                continue
            entries = validation.entries(domain)
            missing = [i for i, entry in enumerate(entries) if self._cached(entry) is None]
            if missing:
                fresh = validation.scored(self._live_model, self.device, domain, missing, stride=stride)[0]
                for i, result in zip(missing, fresh, strict=True):
                    self._live_by_entry[id(entries[i])] = (entries[i], result)
            self._live_scans[domain] = (validation.revision(domain),
                                        np.stack([self._cached(entry) for entry in entries]))  # type: ignore[misc]
        self._forget_departed(validation)
        return {domain: scans for domain, (_, scans) in self._live_scans.items()}

    def _cached(self, entry: object) -> np.ndarray | None:
        kept = self._live_by_entry.get(id(entry))
        return kept[1] if kept is not None and kept[0] is entry else None

    def _forget_departed(self, validation: ValidationSets) -> None:
        """Drop results of scans that left the sets (the cache holds each entry, so ids are never reused)."""
        present = {id(entry) for domain in validation.domains() for entry in validation.entries(domain)}
        self._live_by_entry = {key: kept for key, kept in self._live_by_entry.items() if key in present}

    def _baselines(self, validation: ValidationSets, live: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per domain, the results a candidate's drop is measured from: the served version's, or (with
        ``regression_baseline`` best) the best a served version reached on the same held-out scans."""
        if self.cfg.regression_baseline != "best":
            return live
        for domain, scans in live.items():
            kept, revision = self._best_scans.get(domain), validation.revision(domain)
            if kept is None or kept[0] != revision or _score(scans).miou >= _score(kept[1]).miou:
                self._best_scans[domain] = (revision, scans)
        return {domain: self._best_scans[domain][1] for domain in live}

    def judge(self, model: nn.Module, validation: ValidationSets, seed: int) -> Decision:
        """Score a candidate on every domain beside the served version; promoted unless a domain regressed."""
        candidate, features = {}, {}
        for domain in validation.domains():
            candidate[domain], pooled = validation.scored(model, self.device, domain, stride=self.cfg.model.stride,
                                                          with_features=True)
            if pooled is not None:
                features[domain] = pooled
        live = self._score_live(validation)
        baselines = self._baselines(validation, live)
        scores, live_scores = _scores(candidate), _scores(live)
        comparisons = {domain: compare(baselines[domain], scans, seed=seed)
                       for domain, scans in candidate.items() if domain in live}
        regressions = {domain: c for domain, c in comparisons.items()
                       if c.regressed(self.cfg.regression_tolerance, self.cfg.regression_confidence)}
        # (The untrained version 0 "finds" defects at random: against it, no rule about going blind.)
        blind = [domain for domain, scans in candidate.items()
                 if self.live_version and domain in live and finds_defects(live[domain])
                 and live_scores[domain].miou >= FINDS_DEFECTS_MIOU and not finds_defects(scans)]
        if blind:
            # mIoU cannot fall below 0, so a loose tolerance would pass a model that has gone blind on a
            # domain whose live version really finds its defects; refuse that outright.
            reason = f"finds no defect on {blind}, served version {self.live_version} does"
            log.warning("refused candidate (seed %d): it %s", seed, reason)
            return Decision(False, scores, live_scores, {d: comparisons[d] for d in blind},
                            compared_with=self.live_version, reason=reason)
        if regressions:
            reason = "regressed " + ", ".join(
                f"{d} -{c.drop:.4f} (confidence {c.confidence:.2f}, {c.samples} scans)" for d, c in regressions.items())
            if baselines is not live:
                reason += f" (from the best served on each domain; served version {self.live_version})"
            log.warning("refused candidate (seed %d): %s against version %d; scores %s", seed, reason,
                        self.live_version, _brief(scores))
            return Decision(False, scores, live_scores, regressions, compared_with=self.live_version, reason=reason)
        return Decision(True, scores, live_scores, compared_with=self.live_version, candidate_scans=candidate,
                        candidate_features=features)

    def publish(self, model: nn.Module, decision: Decision, validation: ValidationSets, *,
                version: int | None = None, **details) -> Decision:
        """Write a promoted candidate as a new version (``version``, if given, or FileExistsError); the
        servers follow it unless a pin holds them."""
        assert decision.promoted, "only a promoted candidate is published"
        manifest = self.store.publish(
            model.state_dict(), self.cfg.model, parent_version=self.parent_version, version=version,
            scores={d: {"miou": s.miou, "dice": s.dice, "samples": s.samples} for d, s in decision.scores.items()},
            **details)
        self.parent_version = manifest.version
        if self._unpinned():
            self.live_version = manifest.version
            self._live_model.load_state_dict(model.state_dict())
            self._live_scans = {domain: (validation.revision(domain), scans)
                                for domain, scans in decision.candidate_scans.items()}
            self._live_by_entry = {id(entry): (entry, result) for domain, scans in decision.candidate_scans.items()
                                   for entry, result in zip(validation.entries(domain), scans, strict=True)}
        log.info("published version %d (parent %d): %s", manifest.version, manifest.parent_version,
                 _brief(decision.scores))
        return replace(decision, manifest=manifest, candidate_scans={}, candidate_features={})

    def _unpinned(self) -> bool:
        """Whether servers follow the newest version. After a publish the version is out whatever this says, so
        a store that does not answer means no: the baseline stays, and the next ``follow_served`` corrects it."""
        try:
            return self.store.pinned() is None
        except OSError as exc:
            log.warning("cannot tell whether a pin holds the servers (%s); comparing with version %d until the "
                        "store answers", exc, self.live_version)
            return False

    def adopt(self, version: int) -> None:
        """Another trainer's version (a consolidation) is now what the learner's weights descend from."""
        self.parent_version = version
        self.follow_served()

    def consider(self, learner: ContinualLearner, validation: ValidationSets,
                 offsets: list[dict[str, int | str]], version: int | None = None) -> Decision:
        """Score the learner's published (averaged) weights; publish them as a new version unless some domain
        regressed, or another trainer published while they were judged."""
        # The candidate is judged against the store as it stood (``version``: the number after the newest
        # version looked at); if a consolidation lands meanwhile, the candidate was never compared with it
        # and must not displace it, so it takes that number or none.
        expected = version if version is not None else (self.store.latest() or 0) + 1
        decision = self.judge(learner.published, validation, seed=learner.steps)
        if not decision.promoted:
            return decision
        try:
            decision = self._publish_candidate(learner, decision, validation, offsets, expected)
        except FileExistsError:
            reason = f"version {expected} was published by another trainer while this candidate was judged"
            log.warning("withdrew candidate (seed %d): %s; the next one is judged against it", learner.steps,
                        reason)
            return replace(decision, promoted=False, candidate_scans={}, reason=reason)
        learner.label_times = []
        return decision

    def _publish_candidate(self, learner: ContinualLearner, decision: Decision, validation: ValidationSets,
                           offsets: list[dict[str, int | str]], version: int) -> Decision:
        label_times = learner.label_times
        return self.publish(
            learner.published, decision, validation, version=version,
            strategy=self.cfg.step.strategy,
            offsets=offsets,
            metrics={
                "steps": learner.steps,
                "scans_learned": learner.scans_learned,
                "crop_size": learner.crop_size,
                "projected_steps": learner.projected_steps,
                "memory": learner.memory.per_domain(),
                "labels_learned": len(label_times),
                "label_time_median": statistics.median(label_times) if label_times else 0.0,
                POLARITY_KEY: learner.polarity.summary(),
                REFERENCE_KEY: self._feature_reference(learner, decision, validation),
            },
            newest_label_at=max(label_times, default=0.0),
        )


    def _feature_reference(self, learner: ContinualLearner, decision: Decision,
                           validation: ValidationSets) -> dict[str, dict]:
        """The drift reference from the features the judging pass already computed; a second pass only when
        they are missing (a model without an encoder gives none)."""
        model = learner.published
        if decision.candidate_features and set(decision.candidate_features) == set(validation.domains()):
            stages = stage_channels(model)
            references = {domain: reference_of(features, stages)
                          for domain, features in decision.candidate_features.items()}
        else:
            references = validation.feature_reference(model, self.cfg.model.stride)
        for domain, profile in validation.gain_profiles().items():  # for rigs with another gain curve
            if domain in references:
                references[domain][PROFILE_KEY] = as_state(profile)
        return references


def finds_defects(per_scan: np.ndarray) -> bool:
    """Whether a model's per-scan confusions (N, K, K) show any defect pixel predicted as a defect."""
    confusion = per_scan.sum(axis=0)
    return bool(confusion[1:, 1:].sum() > 0)


def _score(per_scan: np.ndarray) -> SegmentationScore:
    """One domain's score from its per-scan confusions, as the whole set is scored."""
    return score_confusion(per_scan.sum(axis=0), len(per_scan))


def _scores(scans: dict[str, np.ndarray]) -> dict[str, SegmentationScore]:
    return {domain: _score(per_scan) for domain, per_scan in scans.items()}


def _brief(scores: dict[str, SegmentationScore]) -> dict[str, float]:
    return {d: round(s.miou, 4) for d, s in scores.items()}
