"""Run one micro-batch of scans through the live model and turn logits into masks and regions."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from weldstream.preprocess import normalise_scan, pad_to_multiple
from weldstream.server.model_slot import LoadedModel
from weldstream.server.regions import Region, class_fractions, defect_regions


@dataclass(frozen=True)
class Prediction:
    mask: np.ndarray  # (H, W) uint8 class ids at the input's size
    confidence: np.ndarray  # (H, W) float32 probability of the winning class
    fractions: np.ndarray  # (K,) share of pixels per class
    regions: list[Region]
    version: int
    classes: tuple[str, ...]  # the class names of the version that made this mask


@torch.inference_mode()
def predict_batch(loaded: LoadedModel, scans: list[np.ndarray], with_regions: bool = True) -> list[Prediction]:
    """Scans of any sizes -> predictions in the same order.

    Scans are grouped by padded size and each group runs as one batch, so a scan's result does not
    depend on which other scans shared its batch.
    """
    inputs = [normalise_scan(scan) for scan in scans]
    stride = loaded.config.stride
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, array in enumerate(inputs):
        c, h, w = array.shape
        groups[(c, h + (-h) % stride, w + (-w) % stride)].append(index)

    results: list[Prediction | None] = [None] * len(scans)
    num_classes = len(loaded.config.classes)
    for indices in groups.values():
        batch = torch.stack([
            pad_to_multiple(torch.from_numpy(inputs[i])[None], stride)[0] for i in indices
        ]).to(loaded.device).contiguous(memory_format=torch.channels_last)
        logits = loaded.module(batch)  # (n, K, H_pad, W_pad)
        confidence, classes = logits.softmax(dim=1).max(dim=1)
        confidence = confidence.float().cpu().numpy()
        classes = classes.to(torch.uint8).cpu().numpy()
        for row, i in enumerate(indices):
            h, w = inputs[i].shape[-2:]
            mask = np.ascontiguousarray(classes[row, :h, :w])
            conf = np.ascontiguousarray(confidence[row, :h, :w])
            results[i] = Prediction(
                mask=mask,
                confidence=conf,
                fractions=class_fractions(mask, num_classes),
                regions=defect_regions(mask, conf, num_classes) if with_regions else [],
                version=loaded.version,
                classes=tuple(loaded.config.classes),
            )
    return [r for r in results if r is not None]
