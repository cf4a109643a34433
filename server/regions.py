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
    """8-connected components of every defect class (background, class 0, skipped), largest first
    (ties in class, then scan, order). ``entropy``: the normalised entropy map, whose mean over a
    region's pixels is its doubt (0 without it).

    Each class is labelled once, the labels are merged into one image, and areas, confidence and entropy
    sums and bounding boxes of all components come from single passes (bincount, find_objects); Python
    touches only the regions returned, so a mask with thousands of specks costs milliseconds.
    """
    merged = np.zeros(mask.shape, dtype=np.int32)
    owners = [np.zeros(1, dtype=np.int64)]  # class of each merged label; label 0 is background
    labelled = 0
    for class_id in range(1, num_classes):
        binary = mask == class_id
        if not binary.any():
            continue
        labels, count = ndimage.label(binary, structure=_EIGHT_CONNECTED)
        np.add(merged, labels + labelled, out=merged, where=binary)
        owners.append(np.full(count, class_id, dtype=np.int64))
        labelled += count
    if not labelled:
        return []
    classes = np.concatenate(owners)
    flat = merged.reshape(-1)
    areas = np.bincount(flat, minlength=len(classes))
    sums = np.bincount(flat, weights=np.asarray(confidence, dtype=np.float64).reshape(-1), minlength=len(classes))
    doubts = (np.bincount(flat, weights=np.asarray(entropy, dtype=np.float64).reshape(-1), minlength=len(classes))
              if entropy is not None else np.zeros(len(classes)))
    keep = np.nonzero(areas >= max(min_area_px, 1))[0]
    keep = keep[keep > 0]
    keep = keep[np.argsort(-areas[keep], kind="stable")][:max_regions]
    # bounding boxes of the kept components only: renumber them 1..len(keep), everything else 0
    renumbered = np.zeros(len(classes), dtype=np.int32)
    renumbered[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    boxes = ndimage.find_objects(renumbered[merged], max_label=len(keep))
    regions = []
    for label, (rows, cols) in zip(keep, boxes, strict=True):
        regions.append(Region(
            class_id=int(classes[label]), x=cols.start, y=rows.start, width=cols.stop - cols.start,
            height=rows.stop - rows.start, area_px=int(areas[label]), mean_confidence=float(sums[label] / areas[label]),
            doubt=float(doubts[label] / areas[label]),
        ))
    return regions
