"""New rigs made from a source domain's raw scans: small pure functions on numpy arrays.

A rig's export is modelled on intensities scaled to [0, 1] of the source rig's full scale (``to_unit``),
changed the way another probe, detector, gain curve or exporter would change them, and written out in the
new rig's dtype (``export``). Only ``flip`` moves pixels, so it is the one transform that takes the mask
too; ``halve_defect_contrast`` reads the mask to know where the flaws are. Noise draws from the generator
it is given, so a rig's scan is the same for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weldstream.simulator import get_domain

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def to_unit(image: np.ndarray, full_scale: float) -> np.ndarray:
    """A raw scan -> float64 intensities as a share of ``full_scale``."""
    return np.asarray(image, dtype=np.float64) / float(full_scale)


def export(unit: np.ndarray, dtype: str, bits: int | None = None) -> np.ndarray:
    """Intensities in [0, 1] -> the rig's dtype: uint8/uint16 use ``bits`` of it (all by default), rounded
    and clipped to the range; float32 is written as it is."""
    if dtype == "float32":
        return np.asarray(unit, dtype=np.float32)
    info = np.iinfo(np.dtype(dtype))
    levels = (1 << (bits if bits is not None else info.bits)) - 1
    if levels > info.max:
        raise ValueError(f"{bits} bits do not fit in {dtype}")
    return np.rint(np.clip(unit, 0.0, 1.0) * levels).astype(dtype)


def flip(unit: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right swapped (the weld seen from its other side), the mask with it."""
    return np.ascontiguousarray(unit[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])


def gamma(unit: np.ndarray, power: float) -> np.ndarray:
    """A detector's or exporter's gamma curve: weak signals lifted for a power below 1."""
    return np.clip(unit, 0.0, None) ** power


def add_noise(unit: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``sigma`` of full scale added to every pixel."""
    return unit + rng.normal(0.0, sigma, unit.shape)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian over +-3 sigma (a single 1 for sigma 0)."""
    if sigma <= 0:
        return np.ones(1)
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return taps / taps.sum()


def blur(unit: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``sigma`` pixels (an unfocused probe or detector), edges reflected."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = np.asarray(unit, dtype=np.float64)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="reflect")
        out = np.apply_along_axis(lambda line: np.convolve(line, kernel, mode="valid"), axis, padded)
    return out


def depth_ramp(unit: np.ndarray, db: float) -> np.ndarray:
    """A gain that grows linearly in dB with depth (row), from 0 dB at the top to ``db`` at the bottom:
    a time-gain curve the source rig did not have."""
    rows = unit.shape[0]
    gain_db = db * np.arange(rows) / max(rows - 1, 1)
    return unit * (10.0 ** (gain_db / 20.0))[:, None]


def dose_gradient(unit: np.ndarray, low: float, high: float) -> np.ndarray:
    """A dose falling off across the detector: intensities scaled from ``low`` at the left edge to
    ``high`` at the right."""
    return unit * np.linspace(low, high, unit.shape[1])[None, :]


def halve_defect_contrast(unit: np.ndarray, mask: np.ndarray, factor: float = 0.5, sigma: float = 4.0
                          ) -> np.ndarray:
    """Every flaw's difference from the background around it scaled by ``factor`` (0.5: half the contrast).
    The background under a flaw is the Gaussian-weighted mean of the flaw-free pixels around it."""
    flaw = mask > 0
    if not flaw.any():
        return np.asarray(unit, dtype=np.float64)
    clean = (~flaw).astype(np.float64)
    weight = blur(clean, sigma)
    background = blur(unit * clean, sigma) / np.maximum(weight, 1e-6)
    background = np.where(weight > 1e-3, background, np.median(unit[~flaw]) if (~flaw).any() else 0.0)
    return np.where(flaw, background + factor * (unit - background), unit)


@dataclass(frozen=True)
class Rig:
    """A new rig made from a source domain's scans: its name, what it changes, and the change."""

    name: str
    source: str
    description: str
    transform: Transform | None  # None: the source's scans as they are (the old rig)

    def scan(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The rig's export of one source scan, and the mask that goes with it."""
        if self.transform is None:
            return image, mask
        return self.transform(image, mask, np.random.default_rng([seed, 0x5CA1]))


def _full_scale(source: str) -> float:
    return float(get_domain(source).rig.full_scale)


def flip_gamma_noise_16bit(source: str) -> Transform:
    scale = _full_scale(source)

    def apply(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        unit, mask = flip(to_unit(image, scale), mask)
        return export(add_noise(gamma(unit, 0.6), 0.02, rng), "uint16"), mask
    return apply


def blurred(source: str, sigma: float = 0.75) -> Transform:
    scale, dtype = _full_scale(source), get_domain(source).dtype

    def apply(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return export(blur(to_unit(image, scale), sigma), dtype), mask
    return apply


def depth_gain(source: str, db: float = 26.0, sigma: float = 0.0) -> Transform:
    """The depth-gain ramp, after a blur of ``sigma`` pixels if given (another probe behind another TGC slope)."""
    scale = _full_scale(source)

    def apply(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        unit = to_unit(image, scale)
        # exported with headroom (16-bit of the source's full scale x the ramp), so the gain clips nothing
        ramp = 10.0 ** (db / 20.0)
        return export(depth_ramp(blur(unit, sigma) if sigma > 0 else unit, db) / ramp, "uint16"), mask
    return apply


def half_contrast(source: str) -> Transform:
    scale, dtype = _full_scale(source), get_domain(source).dtype

    def apply(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return export(halve_defect_contrast(to_unit(image, scale), mask), dtype), mask
    return apply


def bit_depth(source: str, dtype: str = "uint8", bits: int | None = None) -> Transform:
    scale = _full_scale(source)

    def apply(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return export(to_unit(image, scale), dtype, bits), mask
    return apply


def dose_ramp(source: str, low: float = 0.5, high: float = 1.5) -> Transform:
    scale, dtype = _full_scale(source), get_domain(source).dtype

    def apply(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        # the source's counts sit well inside the detector's range, so the ramp is kept on the same scale
        return export(dose_gradient(to_unit(image, scale), low, high), dtype), mask
    return apply


ULTRASONIC_SOURCE = "ut-pe100-5mhz"
RADIOGRAPH_SOURCE = "xray-dda-steel-x70-inverted"


def rigs_of(source: str) -> list[Rig]:
    """The new rigs made from ``source``'s scans, in the report's order (its first is the one the targets
    single out: the flip + gamma + noise + bit-depth export for an ultrasonic source)."""
    if get_domain(source).modality == "ultrasonic":
        return [
            Rig("flip+gamma+noise+16-bit", source, "mirrored, gamma 0.6, 2 % Gaussian noise, 16-bit export",
                flip_gamma_noise_16bit(source)),
            Rig("blur", source, "Gaussian blur, sigma 0.75 px", blurred(source, 0.75)),
            Rig("depth-gain", source, "gain rising 26 dB from the top row to the bottom one",
                depth_gain(source, 26.0)),
            Rig("half-contrast", source, "every flaw's contrast to its background halved", half_contrast(source)),
            Rig("8-bit", source, "the 12-bit amplitude exported as 8-bit", bit_depth(source, "uint8")),
            Rig("depth-gain+blur", source, "the blur and the depth-gain ramp together (another probe and TGC slope)",
                depth_gain(source, 26.0, 0.75)),
        ]
    return [Rig("dose-gradient", source, "dose falling from 1.5x to 0.5x across the detector",
                dose_ramp(source, 1.5, 0.5))]


def old_rig(source: str) -> Rig:
    """The source rig itself, as the version learned it."""
    return Rig("old rig", source, "the source domain's own scans", None)


def unseen_rig(domain: str) -> Rig:
    """Another simulator domain, sent as it is."""
    return Rig(domain, domain, "another simulator domain, unseen by this version", None)
