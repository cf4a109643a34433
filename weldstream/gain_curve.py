"""A rig's gain curve: how its scans' brightness runs along depth and across the width, against a learned domain's.

A rig with another time-gain curve (ultrasonic TGC slope) or another dose falloff across the detector
(radiograph source distance, heel effect) makes the same weld brighter at the bottom or the right than the
rig the version learned from. BatchNorm statistics of its own (server/rig_normalisation.py) only shift and
scale whole feature maps, so they cannot undo a gain that changes along the scan; an intensity profile can.

A scan's *profile* is the mean brightness of each of ``BINS`` bands of rows (and of columns), in dB against
the scan's own mean, on the windowed scan (``window_intensities`` + 2, so 0..4 and never negative) that the
model sees: the learner measures it on its held-out scans per domain (its reference), the server on a rig's
served scans. The rig's curve against a domain is a low-order polynomial in dB (so a weld cap, a back-wall
echo or a flaw in a few scans shapes neither) by which the rig's raw scans are divided before they are
windowed. Windowing subtracts each scan's dark level, so a gain on a raw scan with an offset (a radiograph's
parent metal) is not the same gain on the windowed one: the curve is fitted in a few rounds, each on the
scans corrected by the rounds before, until their windowed profile matches the domain's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from weldstream.preprocess import window_intensities

BINS = 16  # bands of rows (and of columns) a profile has, whatever the scan's size
DEGREE = 2  # of the polynomial in relative position fitted to a profile difference (a ramp and a bend)
ROUNDS = 6  # of fitting on corrected scans (one suffices without a dark offset); the closest is kept
MAGNIFICATION = 10.0  # the most a windowed profile is taken to magnify a raw gain (film density: about 7)
PROFILE_KEY = "gain_profile"  # a domain's reference profile in a version's drift references (rows + columns)
FLOOR = 1e-3  # a band darker than this (windowed units) counts as this, so a black band has a finite level


@dataclass(frozen=True)
class GainCurve:
    """Polynomial coefficients (highest power first, in dB over relative position 0..1) of the gain along the
    rows and along the columns that a rig adds against ``domain``."""

    domain: str
    rows: tuple[float, ...]
    columns: tuple[float, ...]

    def db(self, axis: str, length: int) -> np.ndarray:
        """The curve's gain in dB at each of ``length`` rows or columns."""
        coefficients = self.rows if axis == "rows" else self.columns
        return np.polyval(np.asarray(coefficients), _positions(length))

    @property
    def span_db(self) -> float:
        """The largest gain difference the curve makes between two places of a scan (rows and columns added)."""
        grid = _positions(64)
        return float(sum(np.ptp(np.polyval(np.asarray(c), grid)) for c in (self.rows, self.columns)))

    def to_state(self) -> dict:
        return {"domain": self.domain, "rows": list(self.rows), "columns": list(self.columns)}

    @classmethod
    def from_state(cls, state: dict) -> GainCurve:
        return cls(str(state["domain"]), tuple(float(c) for c in state["rows"]),
                   tuple(float(c) for c in state["columns"]))


def _positions(length: int) -> np.ndarray:
    return (np.arange(length) + 0.5) / max(length, 1)


def _bands(levels: Tensor) -> Tensor:
    """(N, L) levels along one axis -> (N, BINS) band means (a scan shorter than BINS repeats its rows)."""
    return F.adaptive_avg_pool1d(levels[:, None, :], BINS)[:, 0]


def profiles(windowed: Tensor) -> Tensor:
    """(N, C, H, W) windowed scans (``window_intensities``) -> (N, 2, BINS) dB profiles along rows and columns,
    each against its scan's mean level."""
    level = (windowed.double() + 2.0).mean(dim=1)  # (N, H, W), 0..4
    rows = _bands(level.mean(dim=2)).clamp(min=FLOOR)
    columns = _bands(level.mean(dim=1)).clamp(min=FLOOR)
    mean = level.mean(dim=(1, 2)).clamp(min=FLOOR)[:, None]
    return 20.0 * torch.log10(torch.stack([rows / mean, columns / mean], dim=1))


def mean_profile(windowed: Iterable[Tensor]) -> np.ndarray:
    """The (2, BINS) mean profile of scans given as (N, C, H, W) batches of any sizes."""
    parts = [profiles(batch) for batch in windowed]
    return torch.cat(parts).mean(dim=0).cpu().numpy() if parts else np.zeros((2, BINS))


def fit(rig: np.ndarray, reference: np.ndarray, domain: str) -> GainCurve:
    """The curve that takes ``reference``'s (2, BINS) mean profile to ``rig``'s: least squares in dB."""
    grid = _positions(BINS)
    difference = np.asarray(rig, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    rows, columns = (tuple(float(c) for c in np.polyfit(grid, difference[axis], DEGREE)) for axis in (0, 1))
    return GainCurve(domain, rows, columns)


def undo(raw: Tensor, curve: GainCurve) -> Tensor:
    """(N, C, H, W) raw scans of the rig (any dtype) -> float32, each row and column divided by the curve's
    gain: what ``window_intensities`` then makes of them is what the curve's domain would have shown."""
    height, width = raw.shape[-2:]
    rows = torch.as_tensor(10.0 ** (-curve.db("rows", height) / 20.0), dtype=torch.float32, device=raw.device)
    columns = torch.as_tensor(10.0 ** (-curve.db("columns", width) / 20.0), dtype=torch.float32, device=raw.device)
    return raw.float() * (rows[:, None] * columns[None, :])


def match(raw: Sequence[Tensor], reference: np.ndarray, domain: str, rounds: int = ROUNDS) -> GainCurve:
    """The curve by which the rig's raw scans (each (1, C, H, W)) are divided so that their windowed mean
    profile matches ``reference`` (a domain's).

    Each round fits the profile still left over on the scans corrected so far. Windowing magnifies a raw gain
    by a factor (about the mean level over the mean less the dark level: 1 for a B-scan, 2-3 for a radiograph),
    so each round's step is divided by that factor, measured from the last two rounds (a secant step); the
    round whose corrected scans came closest to the reference is kept.
    """
    def left_over(coefficients: np.ndarray) -> np.ndarray:
        curve = _curve(domain, coefficients)
        step = fit(mean_profile(window_intensities(undo(x, curve)) for x in raw), reference, domain)
        return np.asarray(step.rows + step.columns)

    before = np.zeros(2 * (DEGREE + 1))
    residual_before = left_over(before)
    best = (_span(residual_before), before)
    now = residual_before.copy()  # the first step assumes no magnification
    for _ in range(rounds):
        residual = left_over(now)
        best = min(best, (_span(residual), now), key=lambda pair: pair[0])
        moved = now - before
        factor = float(np.clip((residual_before - residual) @ moved / (moved @ moved), 1.0, MAGNIFICATION))
        before, residual_before, now = now, residual, now + residual / factor
    return _curve(domain, best[1])


def _span(coefficients: np.ndarray) -> float:
    return _curve("", coefficients).span_db


def _curve(domain: str, coefficients: np.ndarray) -> GainCurve:
    values = tuple(float(c) for c in coefficients)
    return GainCurve(domain, values[:DEGREE + 1], values[DEGREE + 1:])


def reference_profiles(stats: dict[str, dict]) -> dict[str, np.ndarray]:
    """Each domain's (2, BINS) reference profile from a version's drift references (domains without one left out)."""
    out = {}
    for name, entry in stats.items():
        profile = entry.get(PROFILE_KEY) if isinstance(entry, dict) else None
        if profile is not None and np.shape(profile) == (2, BINS):
            out[name] = np.asarray(profile, dtype=np.float64)
    return out


def as_state(profile: np.ndarray) -> list[list[float]]:
    """A (2, BINS) profile as the plain lists a manifest holds."""
    return [[round(float(v), 4) for v in axis] for axis in np.asarray(profile)]
