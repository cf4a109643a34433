"""From a class mask to what an inspector reads: per-class pixel fractions and connected defect regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    class_id: int
    x: int
    y: int
    width: int
    height: int
    area_px: int
    mean_confidence: float


def class_fractions(mask: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(mask.reshape(-1), minlength=num_classes)[:num_classes]
    return counts / max(mask.size, 1)


def defect_regions(mask: np.ndarray, confidence: np.ndarray, num_classes: int, min_area_px: int = 1) -> list[Region]:
    """8-connected components of every defect class (background, class 0, skipped), largest first."""
    regions: list[Region] = []
    for class_id in range(1, num_classes):
        binary = mask == class_id
        if not binary.any():
            continue
        labels, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
        areas = np.bincount(labels.reshape(-1), minlength=count + 1)
        sums = np.bincount(labels.reshape(-1), weights=confidence.reshape(-1), minlength=count + 1)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None or areas[index] < min_area_px:
                continue
            rows, cols = box
            regions.append(Region(
                class_id=class_id,
                x=cols.start, y=rows.start,
                width=cols.stop - cols.start, height=rows.stop - rows.start,
                area_px=int(areas[index]),
                mean_confidence=float(sums[index] / areas[index]),
            ))
    regions.sort(key=lambda r: r.area_px, reverse=True)
    return regions
