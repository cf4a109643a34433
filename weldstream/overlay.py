"""Masks drawn over scans, for people: one colour per defect class."""

from __future__ import annotations

import numpy as np
from PIL import Image

from weldstream.preprocess import normalise_scan

# RGB per class id: background transparent, then crack red, porosity yellow, lack of fusion cyan, inclusion magenta.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 40, 40), (250, 210, 30), (40, 200, 230), (220, 60, 220),
)


def scan_to_grey(image: np.ndarray) -> np.ndarray:
    """Any scan -> uint8 H x W for display, windowed like the model sees it."""
    normalised = normalise_scan(image)[0]
    return np.clip((normalised / 4.0 + 0.5) * 255, 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """H x W x 3 uint8: the scan in grey with defect pixels tinted by class."""
    grey = scan_to_grey(image).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    palette = np.array(CLASS_COLOURS * (1 + int(mask.max()) // len(CLASS_COLOURS)), dtype=np.float32)
    defect = mask > 0
    rgb[defect] = (1 - alpha) * rgb[defect] + alpha * palette[mask[defect]]
    return rgb.astype(np.uint8)


def save_overlay(path: str, image: np.ndarray, mask: np.ndarray) -> None:
    Image.fromarray(overlay(image, mask)).save(path)
