"""Drift per rig: how far each rig's scans are from the domains the live version learned, and when that changes.

Each served scan's summary (its encoder stages' features pooled, see weldstream/features.py) is
compared with every reference domain of the live version: the distance to a domain is the RMS of the
z-scores ``(feature - domain mean) / domain std``, every encoder stage weighing the same whatever its
channel count, so a scan like the domain's held-out scans sits near 1; the scan's distance is the one
to its nearest domain. Per rig the server keeps

- a drift score: an exponentially weighted mean of those distances (the ``inference_drift_score``
  gauge; a rig counts as drifting while it is above ``threshold``), and
- a Page-Hinkley test on the distances, which raises a ``drift`` event (log line + counter) when a
  rig's scans move away from where they were: a new probe, another pipe, a gain curve changed.

Where the references come from: the learner writes them into each version's manifest (per domain,
the mean and std of the summary over the domain's held-out scans: exactly the domains the version was
trained and validated on). A version without them (the untrained version 0, or one published before
they existed) gets a reference built from the first ``bootstrap_scans`` scans it serves, pooled over
rigs: the best proxy the server has for "what the rigs looked like when this version went live".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from weldstream.features import REFERENCE_KEY
from weldstream.server.page_hinkley import PageHinkley
from weldstream.weight_store import Manifest

log = logging.getLogger(__name__)
STD_FLOOR_SHARE = 0.1  # channel stds are floored at this share of their median, so a dead channel cannot blow up


@dataclass(frozen=True)
class DriftConfig:
    smoothing: float = 0.05  # weight of each new scan in the rig's drift score
    threshold: float = 3.0  # drift score above which a rig's scans go to review
    ph_delta: float = 0.25
    ph_threshold: float = 10.0
    ph_min_samples: int = 30
    bootstrap_scans: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.smoothing <= 1 or self.threshold <= 0 or self.bootstrap_scans < 2:
            raise ValueError("drift needs 0 < smoothing <= 1, threshold > 0 and bootstrap_scans >= 2")


@dataclass(frozen=True)
class References:
    """Per reference domain, the mean (D, C) and floored std (D, C) of the scan summary; each channel's
    weight (C,) gives every encoder stage the same share of the distance."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_stats(cls, stats: dict[str, dict], stages: tuple[int, ...] = ()) -> References | None:
        names = tuple(sorted(stats))
        if not names:
            return None
        mean = np.array([stats[n]["mean"] for n in names], dtype=np.float64)
        std = np.array([stats[n]["std"] for n in names], dtype=np.float64)
        floor = STD_FLOOR_SHARE * np.median(std, axis=1, keepdims=True) + 1e-6
        stages = tuple(stats[names[0]].get("stages") or stages)
        if sum(stages) != mean.shape[1]:
            stages = (mean.shape[1],)  # unknown stages: every channel weighs the same
        weights = np.concatenate([np.full(n, 1.0 / (n * len(stages))) for n in stages])
        return cls(names, mean, np.maximum(std, floor), weights)

    @classmethod
    def from_manifest(cls, manifest: Manifest | None, stages: tuple[int, ...] = ()) -> References | None:
        if manifest is None:
            return None
        return cls.from_stats(manifest.metrics.get(REFERENCE_KEY) or {}, stages)

    @classmethod
    def from_samples(cls, name: str, samples: np.ndarray, stages: tuple[int, ...] = ()) -> References:
        return cls.from_stats({name: {"mean": samples.mean(axis=0), "std": samples.std(axis=0)}}, stages)

    def distance(self, features: np.ndarray) -> tuple[float, str]:
        """(distance to the nearest domain, its name) of one (C,) summary."""
        z = (features[None, :].astype(np.float64) - self.mean) / self.std
        rms = np.sqrt((z * z) @ self.weights)
        nearest = int(rms.argmin())
        return float(rms[nearest]), self.names[nearest]


@dataclass
class RigDrift:
    score: float = 0.0
    seen: int = 0
    detector: PageHinkley = field(default_factory=PageHinkley)


@dataclass(frozen=True)
class DriftReading:
    score: float  # the rig's drift score after this scan (0 while there is no reference yet)
    distance: float  # this scan's distance to the nearest reference domain
    event: bool  # the change detector fired on this scan
    drifting: bool  # score above the threshold


class DriftMonitor:
    """Drift of every rig against the live version's references; one instance per server."""

    def __init__(self, cfg: DriftConfig | None = None) -> None:
        self.cfg = cfg or DriftConfig()
        self.version: int | None = None
        self.stages: tuple[int, ...] = ()
        self.references: References | None = None
        self._bootstrap: list[np.ndarray] = []
        self._rigs: dict[str, RigDrift] = {}

    def follow(self, version: int, manifest: Manifest | None, stages: tuple[int, ...] = ()) -> None:
        """A new live version: new references, and every rig starts afresh against them. ``stages``: the
        channels of each encoder stage in the summary (weldstream.features.stage_channels)."""
        if version == self.version:
            return
        self.version, self.stages = version, stages
        self.references = References.from_manifest(manifest, stages)
        self._bootstrap = []
        self._rigs = {}

    def forget(self, rig: str) -> None:
        """The rig's scans are normalised differently from now on: its score and detector start afresh."""
        self._rigs.pop(rig, None)

    def observe(self, rig: str, features: np.ndarray) -> DriftReading:
        """One scan of ``rig`` served by the followed version."""
        if self.references is None:
            self._bootstrap.append(features.astype(np.float64))
            if len(self._bootstrap) < self.cfg.bootstrap_scans:
                return DriftReading(0.0, 0.0, False, False)
            self.references = References.from_samples("served", np.stack(self._bootstrap), self.stages)
            self._bootstrap = []
        cfg = self.cfg
        state = self._rigs.get(rig)
        if state is None:
            state = self._rigs[rig] = RigDrift(detector=PageHinkley(cfg.ph_delta, cfg.ph_threshold,
                                                                    cfg.ph_min_samples))
        distance, nearest = self.references.distance(features)
        state.score = distance if state.seen == 0 else state.score + cfg.smoothing * (distance - state.score)
        state.seen += 1
        event = state.detector.update(distance)
        if event:
            log.warning("drift: the scans of rig %r changed (distance %.2f to nearest domain %r, score %.2f)",
                        rig, distance, nearest, state.score)
        return DriftReading(state.score, distance, event, state.score > cfg.threshold)
