"""Run one micro-batch of scans through the live model and turn logits into masks and regions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from weldstream.features import merge_tiles, pooled_features
from weldstream.preprocess import normalise_scan
from weldstream.server.doubt import scan_doubt
from weldstream.server.model_slot import LoadedModel
from weldstream.server.regions import Region, class_fractions, defect_regions
from weldstream.tiles import segment_with_entropy


@dataclass(frozen=True)
class Prediction:
    mask: np.ndarray  # (H, W) uint8 class ids at the input's size
    confidence: np.ndarray  # (H, W) float32 probability of the winning class
    fractions: np.ndarray  # (K,) share of pixels per class
    regions: list[Region]
    version: int
    classes: tuple[str, ...]  # the class names of the version that made this mask
    doubt: float = 0.0  # 0..1, see server/doubt.py
    features: np.ndarray | None = None  # (C,) every encoder stage pooled, for drift (weldstream/features.py)


@torch.inference_mode()
def predict_batch(loaded: LoadedModel, scans: list[np.ndarray], with_regions: bool = True) -> list[Prediction]:
    """Scans of any sizes -> predictions in the same order.

    Scans are grouped by size and each group runs as one batch (large scans in tiles, see ``tiles``),
    so a scan's result does not depend on which other scans shared its batch.
    """
    inputs = [normalise_scan(scan) for scan in scans]
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, array in enumerate(inputs):
        groups[array.shape].append(index)

    results: list[Prediction | None] = [None] * len(scans)
    num_classes = len(loaded.config.classes)
    for indices in groups.values():
        batch = torch.stack([torch.from_numpy(inputs[i]) for i in indices]).to(loaded.device)
        with pooled_features(loaded.module) as captured:
            classes, confidence, entropy = segment_with_entropy(
                loaded.module, batch.contiguous(memory_format=torch.channels_last), loaded.config.stride)
        assert entropy is not None
        doubts = scan_doubt(entropy).cpu().numpy()
        features = merge_tiles(captured)
        features = features.cpu().numpy() if features is not None else None
        classes, confidence, entropy = classes.cpu().numpy(), confidence.cpu().numpy(), entropy.cpu().numpy()
        for row, i in enumerate(indices):
            mask, conf = classes[row], confidence[row]
            results[i] = Prediction(
                mask=mask,
                confidence=conf,
                fractions=class_fractions(mask, num_classes),
                regions=defect_regions(mask, conf, num_classes, entropy=entropy[row]) if with_regions else [],
                version=loaded.version,
                classes=tuple(loaded.config.classes),
                doubt=float(doubts[row]),
                features=features[row] if features is not None else None,
            )
    return [r for r in results if r is not None]
