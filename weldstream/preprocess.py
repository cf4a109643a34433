"""Scan preprocessing shared by serving and training: intensity normalisation, padding, resizing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Percentiles that bound the intensity window; robust to hot pixels and saturated back-wall echoes.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def normalise_scan(image: np.ndarray) -> np.ndarray:
    """Any H x W or C x H x W scan (uint8, uint16, float) -> float32 C x H x W, roughly zero-mean unit-range.

    Each scan is windowed on its own percentiles, so a 12-bit rig, a 16-bit detector and a float
    export of the same weld land on the same scale; polarity is left alone (the model learns it).
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"a scan must be H x W or C x H x W, got shape {array.shape}")
    low, high = (float(v) for v in np.percentile(array, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    scale = high - low
    if scale <= 0:
        return np.zeros_like(array)
    array = (np.clip(array, low, high) - low) / scale
    return ((array - 0.5) * 4.0).astype(np.float32, copy=False)


def pad_to_multiple(batch: torch.Tensor, stride: int) -> torch.Tensor:
    """Reflect-pad (N, C, H, W) on the bottom and right so H and W divide by stride."""
    height, width = batch.shape[-2:]
    pad_h = (-height) % stride
    pad_w = (-width) % stride
    if pad_h == 0 and pad_w == 0:
        return batch
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(batch, (0, pad_w, 0, pad_h), mode=mode)


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a normalised image (C, H, W) bilinearly and its mask (H, W) by nearest neighbour."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].to(mask.dtype)
    return image, mask


def training_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A raw scan and its mask -> (C, H, W) float32 and (H, W) uint8 tensors, normalised exactly as the
    server normalises a request; at native size unless ``size`` asks for a resize (benchmarks only)."""
    if image.shape[-2:] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    x = torch.from_numpy(normalise_scan(image))
    y = torch.from_numpy(np.array(mask, dtype=np.uint8))
    return (x, y) if size is None else resize_pair(x, y, size)
