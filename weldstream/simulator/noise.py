"""Smooth random curves: the slow wobble of weld caps, bore surfaces and wall thickness."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """n samples of zero-mean, unit-std noise smoothed over about `sigma` samples (periodic)."""
    wave = ndimage.gaussian_filter1d(rng.standard_normal(n), max(sigma, 0.5), mode="wrap")
    wave -= wave.mean()
    return wave / (wave.std() + 1e-12)
