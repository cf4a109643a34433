"""Did a candidate really score lower than the live version on a domain, or is it validation noise?

A domain's validation set is a few dozen held-out scans, and mIoU over so few scans moves by several
points between two equally good models. Comparing two scores with a fixed tolerance then refuses good
candidates whenever the live version was lucky, and can hold the server on an old version for good.
So both models are scored on the same scans, scan by scan, and the drop counts only if a paired
bootstrap over those scans says the candidate is lower in at least `confidence` of the resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weldstream.scoring import mean_iou

RESAMPLES = 2000


@dataclass(frozen=True)
class Comparison:
    drop: float  # live mIoU minus candidate mIoU on the same held-out scans
    confidence: float  # share of paired bootstrap resamples in which the candidate scores lower
    samples: int

    def regressed(self, tolerance: float, confidence: float) -> bool:
        """Lower by more than the tolerance, and lower by more than chance."""
        return self.drop > tolerance and self.confidence >= confidence


def compare(live: np.ndarray, candidate: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """Paired comparison of per-scan confusion matrices (N, K, K) of the same N scans.

    Each resample draws N scans with replacement, the same draw for both models, and scores each model
    on the summed confusion of the draw, exactly as the full set is scored.
    """
    if live.shape != candidate.shape:
        raise ValueError(f"live {live.shape} and candidate {candidate.shape} were not scored on the same scans")
    n = len(live)
    drop = float(mean_iou(live.sum(axis=0)) - mean_iou(candidate.sum(axis=0)))
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)  # (B, N) counts
    live_resampled = mean_iou(np.tensordot(draws, live, axes=1))  # (B,)
    candidate_resampled = mean_iou(np.tensordot(draws, candidate, axes=1))
    return Comparison(drop, float(np.mean(candidate_resampled < live_resampled)), n)
