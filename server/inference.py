"""Run one micro-batch of scans through the live model and turn its output into masks and regions.

Everything up to the mask happens on the model's device: the raw pixels cross once in their own dtype
(``staging``), are windowed there (``window_intensities``, the learner's normalisation too), run through
the version's backend in tiles if large (``tiles.segment_maps``), and come back as a uint8 class map,
the winning class's confidence, each scan's doubt (the mean of the entropy map, reduced on the device)
and its pooled encoder features for drift. The entropy map itself crosses back only when a scan of the
group asked for regions, whose doubt is the mean over their pixels; region extraction runs on the host.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from weldstream.gain_curve import undo
from weldstream.norm_stats import with_statistics
from weldstream.preprocess import as_channels, window_intensities
from weldstream.server.backends import Backend, bucket_size
from weldstream.server.doubt import scan_doubt
from weldstream.server.model_slot import LoadedModel
from weldstream.server.regions import Region, class_fractions, defect_regions
from weldstream.server.rig_normalisation import VERSION_STATISTICS, Served
from weldstream.server.staging import fetch, host_threads, stage, torch_dtype
from weldstream.tiles import PixelMaps, ServingHead, segment_maps

BUCKET_LIMIT = 64  # the largest bucket; a larger batch runs at its own size


@dataclass(frozen=True)
class Prediction:
    mask: np.ndarray  # (H, W) uint8 class ids at the input's size (may be a view into the batch's array)
    confidence: np.ndarray  # (H, W) float32 probability of the winning class
    fractions: np.ndarray  # (K,) share of pixels per class
    regions: list[Region]  # empty unless the request asked for regions
    version: int
    classes: tuple[str, ...]  # the class names of the version that made this mask
    doubt: float = 0.0  # 0..1, see server/doubt.py
    features: np.ndarray | None = None  # (C,) every encoder stage pooled, for drift (weldstream/features.py)
    normalisation: Served = VERSION_STATISTICS  # the BatchNorm statistics it was normalised with
    backend: str = ""  # what ran its forward pass


@torch.inference_mode()
def predict_batch(loaded: LoadedModel, scans: list[np.ndarray],
                  with_regions: bool | Sequence[bool] = True,
                  statistics: Sequence[Served] | None = None) -> list[Prediction]:
    """Scans of any sizes -> predictions in the same order; ``with_regions`` for all scans or per scan;
    ``statistics``: per scan, the BatchNorm statistics to normalise it with (default: the version's).

    Scans are grouped by size, dtype and statistics, and each group runs as one batch (large scans in
    tiles, see ``tiles``), so a scan's result does not depend on which other scans shared its batch.
    """
    wants = [with_regions] * len(scans) if isinstance(with_regions, bool) else list(with_regions)
    served = list(statistics) if statistics is not None else [VERSION_STATISTICS] * len(scans)
    groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for index, scan in enumerate(scans):
        groups[(as_channels(scan).shape, torch_dtype(scan), id(served[index]))].append(index)

    device = loaded.device
    results: list[Prediction | None] = [None] * len(scans)
    num_classes = len(loaded.config.classes)
    for indices in groups.values():
        count = len(indices)
        normalisation = served[indices[0]]
        runner = loaded.runner if normalisation.buffers is None else rig_runner(loaded, normalisation)
        with host_threads(device):
            staged = stage([scans[i] for i in indices], device)
            if normalisation.gain is not None:  # the rig's gain curve undone on the raw pixels
                staged = undo(staged, normalisation.gain)
            images = window_intensities(staged)
            if runner.pads_batches:
                images = _pad_batch(images, bucket_size(count, BUCKET_LIMIT))
        with nullcontext() if runner.torch_threads else host_threads(device):  # padding and tiling copies
            maps = segment_maps(runner.predict, images, loaded.config.stride, with_entropy=True)
        assert maps.entropy is not None
        regions_wanted = any(wants[i] for i in indices)
        with host_threads(device):
            features = maps.features[:count] if maps.features is not None else None
            entropy = maps.entropy[:count] if regions_wanted else None
            masks, confidences, doubts, *rest = fetch(*(t for t in (
                maps.classes[:count], maps.confidence[:count], scan_doubt(maps.entropy[:count]), features, entropy)
                if t is not None))
            pooled = rest.pop(0) if features is not None else None
            entropies = rest.pop(0) if entropy is not None else None
            for row, i in enumerate(indices):
                mask, conf = masks[row], confidences[row]
                results[i] = Prediction(
                    mask=mask,
                    confidence=conf,
                    fractions=class_fractions(mask, num_classes),
                    regions=(defect_regions(mask, conf, num_classes, entropy=entropies[row])
                             if wants[i] and entropies is not None else []),
                    version=loaded.version,
                    classes=tuple(loaded.config.classes),
                    doubt=float(doubts[row]),
                    features=pooled[row] if pooled is not None else None,
                    normalisation=normalisation,
                    backend=runner.name,
                )
    return [r for r in results if r is not None]


def rig_runner(loaded: LoadedModel, served: Served) -> Backend:
    """fp32 eager torch with a rig's own BatchNorm statistics, for this call only (the faster backends fold
    the version's statistics into their convolutions, so a rig with its own runs eagerly: counted in
    ``inference_normalisation_scans_total{backend="torch"}``). Runs on the inference thread, the only one
    that runs the live module."""
    assert served.buffers is not None
    head = ServingHead(loaded.module)

    def predict(padded: torch.Tensor) -> PixelMaps:
        x = padded.contiguous(memory_format=torch.channels_last)
        return PixelMaps(*with_statistics(head, served.buffers, x, prefix="module."))
    return Backend("torch", predict)


def _pad_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (size, C, H, W), the extra rows zeros (their results are dropped)."""
    missing = size - len(images)
    return images if missing <= 0 else F.pad(images, (0, 0, 0, 0, 0, 0, 0, missing))
