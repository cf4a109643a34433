"""Radiographs of steel girth welds: cap and root, ripples, IQI wires, scatter, grain and flaw shadows.

Rows run across the weld and columns along it. Everything is a penetrated steel thickness first
(parent wall + cap + root + wires - voids + tungsten), then Beer-Lambert dose, scatter, unsharpness,
and last the detector: film density with grain, or DDA counts with quantum noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from weldstream.simulator.defects import CRACK, INCLUSION, LACK_OF_FUSION, POROSITY, Defect, WeldZone
from weldstream.simulator.domains import Domain, RadiographRig
from weldstream.simulator.noise import smooth_noise

# Missing (negative) or extra (positive) steel-equivalent thickness, mm, at a flaw's full profile.
VOID_MM = {CRACK: -1.3, POROSITY: -1.6, LACK_OF_FUSION: -1.1, INCLUSION: -1.0}
TUNGSTEN_MM = 3.5  # tungsten absorbs several times more than steel at these energies
IQI_SPACING_MM = 3.0
FILM_WINDOW_OD = (1.0, 4.2)  # optical densities the film digitiser maps to white and black


@dataclass(frozen=True, eq=False)
class RadiographScene:
    """One weld's geometry, drawn before its flaws so flaws can be placed on it."""

    centre_row: np.ndarray  # (W,) row of the weld centre line under each column
    cap_half_rows: np.ndarray  # (W,) half width of the cap in rows
    iqi: np.ndarray  # H x W extra steel thickness of the wire IQI, mm
    zone: WeldZone


def _iqi(rig: RadiographRig, shape: tuple[int, int], pitch: float, strip: tuple[float, float],
         rng: np.random.Generator) -> np.ndarray:
    """Wire IQI on the parent metal: parallel wires across the weld direction, thickest first.

    Each wire's thickness is its chord, averaged over four sub-pixel positions, so wires thinner than a
    pixel fade out the way the real sensitivity limit does.
    """
    height, width = shape
    iqi = np.zeros(shape, np.float64)
    top, bottom = strip
    fits = int((width * pitch - 2.0) // IQI_SPACING_MM) + 1
    wires = rig.iqi_wires_mm[: max(min(fits, len(rig.iqi_wires_mm)), 0)]
    if bottom - top < 2.5 / pitch or not wires:
        return iqi
    span = (len(wires) - 1) * IQI_SPACING_MM
    start = rng.uniform(1.0, max(width * pitch - span - 1.0, 1.0))
    reverse = rng.random() < 0.5
    sub = (np.arange(width)[:, None] + np.array([-0.375, -0.125, 0.125, 0.375])[None, :]) * pitch
    profile = np.zeros(width)
    for i, diameter in enumerate(reversed(wires) if reverse else wires):
        d = sub - (start + i * IQI_SPACING_MM)
        profile += (2 * np.sqrt(np.clip((diameter / 2) ** 2 - d**2, 0.0, None))).mean(axis=1)
    length = min(bottom - top, 18.0 / pitch)
    r0 = int(top + rng.uniform(0, bottom - top - length + 1e-9))
    iqi[r0 : r0 + int(length)] = profile[None, :]
    return iqi


def layout(domain: Domain, shape: tuple[int, int], rng: np.random.Generator) -> RadiographScene:
    """Place the cap (slightly wavy centre and width), the weld zone and the IQI on one side of it."""
    rig: RadiographRig = domain.rig
    height, width = shape
    pitch = domain.pitch_mm(height)
    centre = height / 2 + rng.uniform(-0.06, 0.06) * height
    half_mm = rig.cap_width_mm / 2 * rng.uniform(0.9, 1.1)
    centre_row = centre + 0.2 / pitch * smooth_noise(rng, width, 5.0 / pitch)
    cap_half_rows = half_mm / pitch * (1 + 0.05 * smooth_noise(rng, width, 3.0 / pitch))
    rows = np.arange(height)[:, None]
    allowed = np.abs(rows - centre_row[None, :]) <= cap_half_rows[None, :] * 1.02
    zone = WeldZone(
        origin=(float(centre), 0.0),
        direction=(0.0, 1.0),
        length_px=float(width),
        half_width_px=0.8 * half_mm / pitch,
        fusion_faces_px=(-0.93 * half_mm / pitch, 0.93 * half_mm / pitch, 0.0),
        pitch_mm=pitch,
        allowed=allowed,
    )
    margin = 1.5 / pitch
    above = (margin, centre - half_mm / pitch - margin)
    below = (centre + half_mm / pitch + margin, height - margin)
    strip = above if rng.random() < 0.5 else below
    return RadiographScene(centre_row, cap_half_rows, _iqi(rig, shape, pitch, strip, rng), zone)


def render(domain: Domain, scene: RadiographScene, defects: list[Defect],
           rng: np.random.Generator) -> np.ndarray:
    """The radiograph in the rig's output units (float64, before rounding to its dtype)."""
    rig: RadiographRig = domain.rig
    height, width = shape = scene.iqi.shape
    pitch = domain.pitch_mm(height)
    rows = np.arange(height, dtype=np.float64)[:, None]
    x_mm = np.arange(width)[None, :] * pitch

    # Every background draw happens whether or not flaws are drawn, so a flaw-free render is the same scan.
    gradient_angle = rng.uniform(0, 2 * np.pi)
    ripple_jitter = rng.uniform(0, 2 * np.pi) + 1.2 * smooth_noise(rng, width, 4 / pitch)
    wall_wobble = 0.08 * (smooth_noise(rng, width, 8 / pitch)[None, :]
                          + smooth_noise(rng, height, 8 / pitch)[:, None])
    root_wobble = 1 + 0.2 * smooth_noise(rng, width, 2 / pitch)
    white = rng.standard_normal(shape)
    column_gain = 1 + 0.004 * rng.standard_normal(width)

    # Penetrated steel: wall, rounded cap with arc-shaped solidification ripples, narrower root bead.
    across = (rows - scene.centre_row[None, :]) / scene.cap_half_rows[None, :]
    dome = np.sqrt(np.clip(1 - across**2, 0, None))
    y_mm = across * scene.cap_half_rows[None, :] * pitch
    # Ripples are arcs trailing the weld pool: phase lags with distance from the centre line, and jitters.
    arcs = 2 * np.pi * (x_mm - y_mm**2 / (0.4 * rig.cap_width_mm)) / rig.ripple_period_mm
    cap = rig.cap_height_mm * dome * (1 + 0.06 * np.cos(arcs + ripple_jitter[None, :]))
    root_across = (rows - scene.centre_row[None, :]) * pitch / (rig.root_width_mm / 2)
    root = rig.root_height_mm * root_wobble[None, :] * np.sqrt(np.clip(1 - root_across**2, 0, None))
    thickness = rig.wall_mm + wall_wobble + cap + root + scene.iqi

    # Flaws replace the thickness change under them, in drawing order, so the last flaw drawn wins.
    change = np.zeros(shape, np.float64)
    for defect in defects:
        # Flaws in thicker walls are deeper along the beam too, so their contrast scales with their size.
        extra = TUNGSTEN_MM if defect.material == "tungsten" else VOID_MM[defect.class_id]
        extra *= domain.flaw_scale
        change[defect.footprint] = (extra * defect.strength * defect.profile)[defect.footprint]
    thickness += change

    # Beer-Lambert dose relative to bare parent wall, a tilted source field, a nearly flat scatter fog.
    tilt = (np.cos(gradient_angle) * (x_mm / (width * pitch) - 0.5)
            + np.sin(gradient_angle) * (rows / height - 0.5))
    field = 1 + rig.gradient * tilt
    dose = field * (np.exp(-rig.mu_per_mm * (thickness - rig.wall_mm)) + rig.scatter_fraction)
    sigma = rig.unsharpness_mm / 2.355 / pitch
    if sigma >= 0.3:
        dose = ndimage.gaussian_filter(dose, sigma, truncate=3.0)
    relative = dose / (1 + rig.scatter_fraction)

    if rig.detector == "dda":
        counts = rig.full_scale * rig.parent_level * relative * column_gain[None, :]
        quantum = rig.noise_level * rig.full_scale * np.sqrt(np.clip(counts / rig.full_scale, 0, None))
        return np.clip(counts + quantum * white, 0, rig.full_scale)

    # Film: density rises with log dose along the characteristic curve; grain is worse at high density.
    density = rig.parent_level + rig.film_gamma * np.log10(np.maximum(relative, 1e-6))
    grain = ndimage.gaussian_filter(white, 0.6, truncate=3.0)
    grain /= grain.std() + 1e-9
    density = np.clip(density + rig.noise_level * np.sqrt(np.clip(density, 0.2, None) / 2) * grain, 0.2, 4.5)
    if rig.detector == "film-density":
        return np.minimum(density, rig.full_scale)
    low, high = FILM_WINDOW_OD
    return np.clip((high - density) / (high - low), 0, 1) * rig.full_scale
