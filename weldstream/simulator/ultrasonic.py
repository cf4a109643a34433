"""Phased-array B-scans of PE butt-fusion welds: speckle, fusion line, back wall, bead, TGC and flaw echoes.

Rows are depth (sound path) and columns the probe position across the weld. The signal chain follows
the rig: scatterers -> pulse/beam blur (speckle) -> two-way attenuation -> receiver noise -> gain and
TGC -> envelope -> linear or log display -> digitiser clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from weldstream.simulator.defects import CRACK, INCLUSION, LACK_OF_FUSION, POROSITY, Defect, WeldZone
from weldstream.simulator.domains import Domain, UltrasonicRig
from weldstream.simulator.noise import smooth_noise

BACKWALL_REFLECTIVITY = 10.0  # back-wall echo amplitude over the rms PE speckle amplitude
# Echo amplitude of each flaw class over rms speckle: voids reflect almost everything, inclusions less.
ECHO = {CRACK: 6.0, POROSITY: 8.0, LACK_OF_FUSION: 6.0, INCLUSION: 5.0}
# How much of the beam a flaw blocks: the acoustic shadow it casts on the speckle and back wall below it.
SHADOW = {CRACK: 0.3, POROSITY: 0.55, LACK_OF_FUSION: 0.45, INCLUSION: 0.5}


@dataclass(frozen=True, eq=False)
class UltrasonicScene:
    """One weld's geometry, drawn before its flaws so flaws can be placed on it."""

    fusion_col: np.ndarray  # (H,) column of the fusion plane at each depth row
    backwall_row: np.ndarray  # (W,) row of the bore surface (back wall, or inner bead) under each column
    zone: WeldZone


def layout(domain: Domain, shape: tuple[int, int], rng: np.random.Generator) -> UltrasonicScene:
    """Place the fusion plane (slightly off centre and tilted) and the inner bead under it."""
    rig: UltrasonicRig = domain.rig
    height, width = shape
    pitch = domain.pitch_mm(height)
    centre = width / 2 + rng.uniform(-0.12, 0.12) * width
    slant = np.tan(rng.normal(0.0, 0.06))
    fusion_col = centre + slant * (np.arange(height) - height / 2)
    wall_row = rig.wall_mm / pitch
    foot = fusion_col[int(np.clip(wall_row, 0, height - 1))]
    dx_mm = (np.arange(width) - foot) * pitch
    bead = rig.bead_height_mm * rng.uniform(0.8, 1.2)
    sep, lobe = 0.9 * bead, 0.75 * bead
    lobes = bead * (np.exp(-(((dx_mm - sep) / lobe) ** 2)) + np.exp(-(((dx_mm + sep) / lobe) ** 2)))
    ripple = smooth_noise(rng, width, 3.0 / pitch)
    backwall_row = wall_row + (lobes * 0.8 + ripple * 0.1) / pitch
    top = rig.dead_zone_mm / pitch + 2.0
    bottom = wall_row - 2.0
    direction = np.array([1.0, slant]) / np.hypot(1.0, slant)
    rows = np.arange(height)[:, None]
    allowed = np.broadcast_to((rows > top - 1) & (rows < bottom), shape)
    zone = WeldZone(
        origin=(top, float(centre + slant * (top - height / 2))),
        direction=(float(direction[0]), float(direction[1])),
        length_px=max(bottom - top, 1.0) / float(direction[0]),
        half_width_px=max(2.5 * domain.flaw_scale / pitch, 3.0),
        fusion_faces_px=(0.0,),
        pitch_mm=pitch,
        allowed=allowed,
    )
    return UltrasonicScene(fusion_col, backwall_row, zone)


def _speckle(shape: tuple[int, int], sigma_rows: float, sigma_cols: float,
             rng: np.random.Generator) -> np.ndarray:
    """Complex speckle with unit mean power: white scatterers blurred by a Gaussian pulse-beam spot."""
    height, width = shape
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.fftfreq(width)[None, :]
    transfer = np.exp(-2 * np.pi**2 * (sigma_rows**2 * ky**2 + sigma_cols**2 * kx**2))
    white = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    # White noise stays white under the FFT, so filter it in the frequency domain directly: one inverse FFT.
    return np.fft.ifft2(white * transfer) * (height * width / np.sqrt(2 * np.sum(transfer**2)))


def _receiver_noise(shape: tuple[int, int], sigma_rows: float, rng: np.random.Generator) -> np.ndarray:
    """Complex receiver noise, unit mean power: band-limited along each A-scan, independent across them."""
    parts = [ndimage.gaussian_filter1d(rng.standard_normal(shape), 0.7 * sigma_rows, axis=0, truncate=2.5)
             for _ in range(2)]
    power = sum(float(np.mean(part**2)) for part in parts)
    return (parts[0] + 1j * parts[1]) / np.sqrt(power)


def _shadow(defects: list[Defect], shape: tuple[int, int], sigma_cols: float) -> np.ndarray:
    """Fraction of the beam each flaw blocks from the material below it, blurred by the beam width."""
    shadow = np.zeros(shape, np.float64)
    for defect in defects:
        below = np.maximum.accumulate(defect.footprint, axis=0) & ~defect.footprint
        np.maximum(shadow, below * min(SHADOW[defect.class_id] * defect.strength, 0.85), out=shadow)
    if defects:
        shadow = ndimage.gaussian_filter1d(shadow, max(sigma_cols * 0.7, 0.5), axis=1, truncate=3.0)
    return shadow


def render(domain: Domain, scene: UltrasonicScene, defects: list[Defect],
           rng: np.random.Generator) -> np.ndarray:
    """The B-scan in the rig's output units (float64, before rounding to its dtype)."""
    rig: UltrasonicRig = domain.rig
    height, width = shape = scene.zone.allowed.shape
    pitch = domain.pitch_mm(height)
    depth = (np.arange(height) + 0.5) * pitch
    rows = np.arange(height, dtype=np.float64)[:, None]
    sigma_rows = max(rig.pulse_cycles * rig.wavelength_mm / 2 / 2.355 / pitch, 0.5)
    sigma_cols = max(rig.wavelength_mm * rig.f_number / 2.355 / pitch, 0.5)
    wall_index = int(np.clip(rig.wall_mm / pitch, 0, height - 1))

    # Every background draw happens whether or not flaws are drawn, so a flaw-free render is the same scan.
    speckle = _speckle(shape, sigma_rows, sigma_cols, rng)
    receiver = _receiver_noise(shape, sigma_rows, rng)
    roughness = 1 + 0.15 * smooth_noise(rng, width, sigma_cols * 2)
    ring_phase = rng.uniform(0, 2 * np.pi)

    # Scatterers: PE everywhere above the bore, more of them in the re-crystallised band at the fusion plane.
    dx_mm = (np.arange(width)[None, :] - scene.fusion_col[:, None]) * pitch
    band = 1 + rig.fusion_line_contrast * np.exp(-((dx_mm / 0.45) ** 2))
    material = rows < scene.backwall_row[None, :]
    blocked = 1 - _shadow(defects, shape, sigma_cols)

    # Back wall: a specular echo with a ringing tail; the curved bead lobes and the notch between them
    # reflect less.
    below = rows - scene.backwall_row[None, :]
    sig = max(sigma_rows, 0.6)
    pulse = np.exp(-0.5 * (below / sig) ** 2) + 0.35 * np.exp(-0.5 * ((below - 2.5 * sig) / sig) ** 2)
    slope = np.gradient(scene.backwall_row)
    notch = 1 - 0.7 * np.exp(-(((np.arange(width) - scene.fusion_col[wall_index]) * pitch / 0.6) ** 2))
    lateral = np.clip(roughness, 0.3, None) * notch / (1 + 4 * slope**2)
    backwall = BACKWALL_REFLECTIVITY * pulse * lateral[None, :]

    # Two-way attenuation hits the echoes; gain and TGC lift echoes and receiver noise alike.
    loss = 10 ** (-2 * rig.attenuation_db_per_mm_mhz * rig.frequency_mhz * depth / 20)[:, None]
    tgc_db = np.minimum(rig.tgc_db_per_mm * np.maximum(depth - rig.dead_zone_mm, 0), rig.tgc_max_db)
    gain = 10 ** (tgc_db / 20)[:, None]
    # Calibration puts the back wall at 80 % screen height; rig.gain_db is what the operator added on top.
    reference = BACKWALL_REFLECTIVITY * loss[wall_index, 0] * gain[wall_index, 0] / 0.8
    noise = rig.noise_level * loss[wall_index, 0] * receiver
    field = (speckle * (band * material) + backwall) * blocked * loss + noise
    scale = gain * 10 ** (rig.gain_db / 20) / reference
    amplitude = np.abs(field) * scale

    # The initial pulse and wedge echo saturate the first rows, then ring down into the material.
    dead = rig.dead_zone_mm
    ring = 1 + 0.3 * np.cos(2 * np.pi * depth / (1.5 * rig.wavelength_mm) + ring_phase)
    decay = 1.4 * np.exp(-np.maximum(depth - 0.55 * dead, 0) / (0.18 * dead)) * ring
    amplitude = np.maximum(amplitude, decay[:, None])

    # Flaw echoes replace the pixels they cover, in drawing order, so the last flaw drawn wins. Outside
    # the footprint only the skirt of the beam spot shows, capped at a pixel or so, so the mask stays exact.
    if defects:
        texture = 0.55 + 0.45 * np.abs(speckle)
        echoes = np.zeros(shape, np.float64)
        for defect in defects:
            reflectivity = ECHO[defect.class_id] * defect.strength * (0.35 + 0.65 * defect.profile)
            echo = reflectivity * texture * loss * scale
            echoes[defect.footprint] = echo[defect.footprint]
        covered = echoes > 0
        spot = (min(sigma_rows, 0.8), min(sigma_cols, 1.2))
        skirt = 0.5 * ndimage.gaussian_filter(echoes, spot, truncate=2.5)
        amplitude = np.where(covered, echoes, np.maximum(amplitude, skirt))

    if rig.log_dynamic_range_db is None:
        return np.clip(amplitude, 0, 1) * rig.full_scale
    decibels = 20 * np.log10(np.maximum(amplitude, 1e-9))
    return np.clip(1 + decibels / rig.log_dynamic_range_db, 0, 1) * rig.full_scale
