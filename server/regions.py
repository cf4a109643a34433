"""From a class mask to what an inspector reads: per-class pixel fractions and connected defect regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# Specks smaller than this are noise to an inspector, and an early model makes thousands of them.
MIN_AREA_PX = 4
# The largest regions reported per scan; keeps responses small whatever the mask looks like.
MAX_REGIONS = 256


@dataclass(frozen=True)
class Region:
    class_id: int
    x: int
    y: int
    width: int
    height: int
    area_px: int
    mean_confidence: float
    doubt: float = 0.0  # mean normalised entropy over the region's pixels (server/doubt.py)


def class_fractions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(mask.reshape(-1), minlength=num_classes)[:num_classes]
    return counts / max(mask.size, 1)


def defect_regions(mask: np.ndarray, confidence: np.ndarray, num_classes: int, min_area_px: int = MIN_AREA_PX,
                   max_regions: int = MAX_REGIONS, entropy: np.ndarray | None = None) -> list[Region]:
    """8-connected components of every defect class (background, class 0, skipped), largest first.

    Bounding boxes, areas and confidences are computed for all components at once (no Python loop
    over components), so a noisy mask costs milliseconds, not seconds.
    """
    regions: list[Region] = []
    for class_id in range(1, num_classes):
        binary = mask == class_id
        if not binary.any():
            continue
        labels, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
        rows, cols = np.nonzero(binary)
        label = labels[rows, cols]  # component of every defect pixel
        areas = np.bincount(label, minlength=count + 1)
        sums = np.bincount(label, weights=confidence[rows, cols], minlength=count + 1)
        doubts = (np.bincount(label, weights=entropy[rows, cols], minlength=count + 1) if entropy is not None
                  else np.zeros(count + 1))
        top = np.full(count + 1, mask.shape[0]); np.minimum.at(top, label, rows)  # noqa: E702
        left = np.full(count + 1, mask.shape[1]); np.minimum.at(left, label, cols)  # noqa: E702
        bottom = np.zeros(count + 1, np.int64); np.maximum.at(bottom, label, rows)  # noqa: E702
        right = np.zeros(count + 1, np.int64); np.maximum.at(right, label, cols)  # noqa: E702
        for index in np.nonzero(areas >= max(min_area_px, 1))[0]:
            if index == 0:
                continue
            regions.append(Region(
                class_id=class_id, x=int(left[index]), y=int(top[index]),
                width=int(right[index] - left[index] + 1), height=int(bottom[index] - top[index] + 1),
                area_px=int(areas[index]), mean_confidence=float(sums[index] / areas[index]),
                doubt=float(doubts[index] / areas[index]),
            ))
    regions.sort(key=lambda r: r.area_px, reverse=True)
    return regions[:max_regions]
