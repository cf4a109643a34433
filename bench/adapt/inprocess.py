"""AdaBN in-process with ``weldstream.norm_stats``: the oracle (statistics measured from the test scans
themselves) and the reference the served rows are checked against. Scans are normalised and padded as the
server does (``normalise_scan``, ``segment_maps``), so an in-process mask is the mask a rig would get."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from weldstream.gain_curve import GainCurve, undo
from weldstream.norm_stats import Moments, measure, measuring_copy, with_statistics
from weldstream.preprocess import as_channels, normalise_scan, pad_to_multiple, window_intensities
from weldstream.scoring import confusion_matrix, score_confusion
from weldstream.tiles import pixel_maps, segment_maps

BATCH = 8
# Scans are measured one at a time, as the server measures them (a batch would normalise its deeper layers'
# inputs with the statistics of several scans).
MEASURE_BATCH = 1


def by_size(images: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Indices of the scans of each size, in order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    return groups


def normalised(images: Sequence[np.ndarray], gain: GainCurve | None = None) -> list[Tensor]:
    """Raw scans -> (C, H, W) float32 as the server normalises them (corrected by a rig's ``gain`` curve first)."""
    if gain is None:
        return [torch.from_numpy(normalise_scan(image)) for image in images]
    return [window_intensities(undo(raw(image), gain))[0] for image in images]


def raw(image: np.ndarray) -> Tensor:
    """One raw scan as the (1, C, H, W) float32 tensor the server stages."""
    return torch.tensor(as_channels(image), dtype=torch.float32)[None]


@torch.no_grad()
def rig_moments(model: nn.Module, images: Sequence[np.ndarray], stride: int, batch: int = MEASURE_BATCH,
                gain: GainCurve | None = None) -> Moments:
    """BatchNorm statistics of ``images`` (raw scans of one rig, corrected by ``gain`` first if given):
    measured in batches of one size, pooled."""
    twin = measuring_copy(model)
    xs = normalised(images, gain)
    parts = []
    for indices in by_size(images).values():
        for start in range(0, len(indices), batch):
            chunk = torch.stack([xs[i] for i in indices[start:start + batch]])
            parts.append(measure(twin, pad_to_multiple(chunk, stride)))
    return Moments.pooled(parts)


@torch.no_grad()
def predict(model: nn.Module, images: Sequence[np.ndarray], stride: int, moments: Moments | None = None,
            gain: GainCurve | None = None) -> list[np.ndarray]:
    """Each scan's class map: with the version's statistics, or served with ``moments``; corrected by ``gain``."""
    model.eval()
    if moments is None:
        predictor: object = model
    else:
        buffers = moments.buffers()

        def predictor(padded: Tensor) -> tuple[Tensor, ...]:
            return pixel_maps(with_statistics(model, buffers, padded), with_entropy=False)
    xs = normalised(images, gain)
    masks: list[np.ndarray] = [np.empty(0)] * len(images)
    for indices in by_size(images).values():
        for start in range(0, len(indices), BATCH):
            part = indices[start:start + BATCH]
            classes = segment_maps(predictor, torch.stack([xs[i] for i in part]), stride).classes
            for i, mask in zip(part, classes, strict=True):
                masks[i] = mask.numpy()
    return masks


def miou(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], num_classes: int) -> float:
    """mIoU over the defect classes of a set of scans (one confusion matrix summed over them)."""
    total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for p, t in zip(predicted, truth, strict=True):
        total += confusion_matrix(torch.from_numpy(np.asarray(p)), torch.from_numpy(np.asarray(t)), num_classes)
    return score_confusion(total, len(truth)).miou
