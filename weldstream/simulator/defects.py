"""Flaw shapes with exact footprints, drawn in weld coordinates so both modalities share one geometry.

A generator returns where a flaw is (footprint, the mask) and how strong it is across that area
(profile); the modality renderers turn the profile into an echo or a thickness change, so the mask is
by construction the set of pixels the flaw was drawn into.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from weldstream.classes import DEFECT_CLASSES

CRACK, POROSITY, LACK_OF_FUSION, INCLUSION = (DEFECT_CLASSES.index(name) for name in
                                              ("crack", "porosity", "lack_of_fusion", "inclusion"))


@dataclass(frozen=True, eq=False)
class WeldZone:
    """Where flaws sit: a straight weld axis in pixel coordinates with a band either side of it.

    Generators work in (u along the axis, v across it), so one crack generator serves the vertical
    fusion plane of a PE B-scan and the horizontal cap of a steel radiograph.
    """

    origin: tuple[float, float]  # (row, col) where the axis starts
    direction: tuple[float, float]  # unit (row, col) vector along the axis
    length_px: float
    half_width_px: float  # flaws start within this distance of the axis
    fusion_faces_px: tuple[float, ...]  # offsets v of the fusion faces, where lack of fusion forms
    pitch_mm: float
    allowed: np.ndarray  # H x W bool: pixels a flaw may cover (inside the wall, near the weld)

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) in pixels along and across the axis -> (row, col)."""
        d_row, d_col = self.direction
        return self.origin[0] + u * d_row + v * d_col, self.origin[1] + u * d_col - v * d_row

    def to_weld(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) -> (u, v); the inverse of to_pixels."""
        d_row, d_col = self.direction
        r, c = rows - self.origin[0], cols - self.origin[1]
        return r * d_row + c * d_col, r * d_col - c * d_row


@dataclass(frozen=True, eq=False)
class Defect:
    """One flaw: its class, its footprint (H x W bool) and its strength across it (H x W float32, 0..1)."""

    class_id: int
    footprint: np.ndarray
    profile: np.ndarray
    material: str  # "void", "slag", "tungsten": decides the sign of the contrast on a radiograph
    strength: float  # this flaw's reflectivity or density contrast relative to its class's typical one


def _mm(zone: WeldZone, low: float, high: float, scale: float, rng: np.random.Generator) -> float:
    """A size drawn uniformly in mm, scaled for the domain, in pixels."""
    return float(rng.uniform(low, high)) * scale / zone.pitch_mm


def _start(zone: WeldZone, rng: np.random.Generator, spread: float = 0.8) -> tuple[float, float]:
    u = rng.uniform(0.08, 0.92) * zone.length_px
    return float(u), float(rng.uniform(-spread, spread) * zone.half_width_px)


def _stamp(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rasterise sub-pixel points to the nearest pixel; where points share a pixel the largest value wins."""
    out = np.zeros(shape, np.float32)
    r, c = np.rint(rows).astype(np.intp), np.rint(cols).astype(np.intp)
    keep = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    np.maximum.at(out, (r[keep], c[keep]), values[keep].astype(np.float32))
    return out


def _walk(u0: float, v0: float, angle: float, length: float, rng: np.random.Generator) -> np.ndarray:
    """A jagged random walk in (u, v): 3 px facets whose direction drifts, sampled every 0.5 px -> (n, 2)."""
    facets = max(2, int(length / 3.0))
    heading = angle + np.cumsum(rng.normal(0.0, 0.18, facets)) + rng.normal(0.0, 0.35, facets)
    steps = np.repeat(heading, 6)  # 6 half-pixel steps per facet
    du, dv = 0.5 * np.cos(steps), 0.5 * np.sin(steps)
    return np.stack([u0 + np.cumsum(du), v0 + np.cumsum(dv)], axis=1)


def crack(zone: WeldZone, shape: tuple[int, int], scale: float, rng: np.random.Generator) -> Defect:
    """A branched, jagged crack 1-2 px wide: longitudinal (along the weld) or transverse."""
    u0, v0 = _start(zone, rng, 0.6)
    along = rng.random() < 0.65
    angle = rng.normal(0.0, 0.2) + (0.0 if along else np.pi / 2) + (np.pi if rng.random() < 0.5 else 0.0)
    main = _walk(u0, v0, angle, _mm(zone, 4.0, 12.0, scale, rng), rng)
    paths = [(main, 2 if rng.random() < 0.5 else 1, 1.0)]
    for _ in range(int(rng.integers(0, 4))):
        at = main[int(rng.uniform(0.2, 0.9) * len(main))]
        side = 1.0 if rng.random() < 0.5 else -1.0
        branch_angle = angle + side * rng.uniform(0.35, 0.9)
        paths.append((_walk(at[0], at[1], branch_angle, rng.uniform(0.15, 0.4) * len(main) / 2, rng), 1, 0.7))
    rows, cols, values = [], [], []
    for path, width, weight in paths:
        taper = weight * (0.55 + 0.45 * np.sin(np.linspace(0.0, np.pi, len(path))) ** 0.5)
        offsets = (0.0,) if width == 1 else (-0.35, 0.35)
        for offset in offsets:  # a 2 px crack: two rasterised copies half a pixel either side
            r, c = zone.to_pixels(path[:, 0], path[:, 1] + offset)
            rows.append(r)
            cols.append(c)
            values.append(taper)
    profile = _stamp(shape, np.concatenate(rows), np.concatenate(cols), np.concatenate(values))
    return Defect(CRACK, profile > 0, profile, "void", float(rng.uniform(0.8, 1.2)))


def _window(zone: WeldZone, u: float, v: float, radius: float, shape: tuple[int, int]) -> tuple[slice, slice]:
    row, col = zone.to_pixels(np.float64(u), np.float64(v))
    r0, c0 = max(int(row - radius), 0), max(int(col - radius), 0)
    r1, c1 = min(int(row + radius) + 2, shape[0]), min(int(col + radius) + 2, shape[1])
    return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))


def porosity(zone: WeldZone, shape: tuple[int, int], scale: float, rng: np.random.Generator) -> Defect:
    """A cluster (or a line, along the weld) of round gas pores; profile is the chord through a sphere."""
    u0, v0 = _start(zone, rng)
    count = int(rng.integers(3, 13))
    spread = _mm(zone, 0.8, 2.5, scale, rng)
    across = spread * (0.15 if rng.random() < 0.3 else 0.6)  # linear porosity vs a round cluster
    radii = np.maximum(rng.uniform(0.2, 0.75, count) ** 1.3 * scale / zone.pitch_mm * 1.3, 0.75)
    us, vs = u0 + rng.normal(0.0, spread, count), v0 + rng.normal(0.0, across, count)
    profile = np.zeros(shape, np.float32)
    for u, v, radius in zip(us, vs, radii, strict=True):
        rs, cs = _window(zone, u, v, radius + 1, shape)
        row, col = zone.to_pixels(np.float64(u), np.float64(v))
        d2 = (np.arange(rs.start, rs.stop)[:, None] - row) ** 2 + (np.arange(cs.start, cs.stop) - col) ** 2
        chord = np.sqrt(np.clip(1.0 - d2 / radius**2, 0.0, None)) * min(1.0, radius / 2.5) ** 0.3
        pore = np.where(d2 <= radius**2, np.maximum(chord, 0.15), 0.0)
        np.maximum(profile[rs, cs], pore, out=profile[rs, cs])
    return Defect(POROSITY, profile > 0, profile, "void", float(rng.uniform(0.8, 1.2)))


def lack_of_fusion(zone: WeldZone, shape: tuple[int, int], scale: float, rng: np.random.Generator) -> Defect:
    """A thin, slightly wavy planar flaw lying on a fusion face, elongated along the weld."""
    face = float(rng.choice(zone.fusion_faces_px)) + rng.normal(0.0, 0.4)
    length = _mm(zone, 4.0, 14.0, scale, rng)
    width = max(1.0, _mm(zone, 0.2, 0.6, scale, rng))
    u0 = float(rng.uniform(0.0, max(zone.length_px - length, 1.0)))
    wave_amp, wave_len, phase = rng.uniform(0.15, 0.5), rng.uniform(15.0, 40.0), rng.uniform(0.0, 2 * np.pi)
    rs, cs = _window(zone, u0 + length / 2, face, length / 2 + width + 2, shape)
    rows, cols = np.mgrid[rs, cs].astype(np.float64)
    u, v = zone.to_weld(rows, cols)
    s = (u - u0) / length
    centre = face + wave_amp * np.sin(2 * np.pi * u / wave_len + phase)
    inside = (s >= 0) & (s <= 1) & (np.abs(v - centre) <= width / 2)
    profile = np.zeros(shape, np.float32)
    profile[rs, cs] = np.where(inside, 0.6 + 0.4 * np.sin(np.pi * np.clip(s, 0, 1)) ** 0.4, 0.0)
    return Defect(LACK_OF_FUSION, profile > 0, profile, "void", float(rng.uniform(0.8, 1.2)))


def inclusion(zone: WeldZone, shape: tuple[int, int], scale: float, rng: np.random.Generator,
              tungsten_fraction: float) -> Defect:
    """An irregular blob: thresholded smooth noise under an ellipse; slag is elongated, tungsten compact."""
    tungsten = rng.random() < tungsten_fraction
    if tungsten:
        a, b = _mm(zone, 0.5, 1.3, scale, rng), _mm(zone, 0.4, 1.0, scale, rng)
    else:
        a, b = _mm(zone, 1.5, 4.5, scale, rng), _mm(zone, 0.6, 1.6, scale, rng)
    a, b = max(a, 1.5), max(b, 1.0)
    u0, v0 = _start(zone, rng)
    tilt = rng.normal(0.0, 0.25)
    rs, cs = _window(zone, u0, v0, a + 3, shape)
    rows, cols = np.mgrid[rs, cs].astype(np.float64)
    u, v = zone.to_weld(rows, cols)
    du, dv = u - u0, v - v0
    du, dv = du * np.cos(tilt) + dv * np.sin(tilt), dv * np.cos(tilt) - du * np.sin(tilt)
    ellipse = 1.0 - (du / a) ** 2 - (dv / b) ** 2
    texture = ndimage.gaussian_filter(rng.standard_normal(ellipse.shape), max(b / 2.5, 0.8), truncate=3.0)
    texture /= texture.std() + 1e-9
    score = ellipse + 0.35 * texture
    if not (score > 0).any():
        score = ellipse  # the noise can eat a tiny blob; keep its ellipse
    profile = np.zeros(shape, np.float32)
    if score.size:
        peak = max(float(score.max()), 1e-6)
        profile[rs, cs] = np.where(score > 0, 0.35 + 0.65 * np.clip(score / peak, 0.0, 1.0), 0.0)
    material = "tungsten" if tungsten else "slag"
    return Defect(INCLUSION, profile > 0, profile, material, float(rng.uniform(0.8, 1.2)))


def sample_defects(zone: WeldZone, shape: tuple[int, int], mix: tuple[float, ...], free_fraction: float,
                   mean_extra: float, max_defects: int, scale: float, tungsten_fraction: float,
                   rng: np.random.Generator) -> list[Defect]:
    """The flaws of one scan, in drawing order (later wins); none with probability free_fraction.

    The expected count grows with the scan's aspect ratio (a wider scan covers more weld), and each
    footprint is clipped to zone.allowed; a flaw that ends up smaller than 2 px is dropped.
    """
    if rng.random() < free_fraction:
        return []
    aspect = max(shape[1] / shape[0], 0.25)
    count = min(1 + int(rng.poisson(mean_extra * aspect)), max(1, int(round(max_defects * aspect))))
    odds = np.asarray(mix, np.float64)
    kinds = rng.choice(4, size=count, p=odds / odds.sum())
    defects = []
    for kind in kinds:
        if kind == 0:
            defect = crack(zone, shape, scale, rng)
        elif kind == 1:
            defect = porosity(zone, shape, scale, rng)
        elif kind == 2:
            defect = lack_of_fusion(zone, shape, scale, rng)
        else:
            defect = inclusion(zone, shape, scale, rng, tungsten_fraction)
        footprint = defect.footprint & zone.allowed
        if footprint.sum() >= 2:
            profile = np.where(footprint, defect.profile, np.float32(0.0))
            defects.append(Defect(defect.class_id, footprint, profile, defect.material, defect.strength))
    return defects
