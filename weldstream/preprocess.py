"""Scan preprocessing shared by serving and training: intensity normalisation, padding, resizing.

One function, ``window_intensities``, normalises every scan the system sees: the server calls it on
the model's device, and the learner's training and validation pairs go through it via
``normalise_scan``, so a published score is measured on what a rig's scan becomes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from weldstream.threads import one_thread

# Percentiles that bound the intensity window; robust to hot pixels and saturated back-wall echoes.
LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def percentiles(flat: torch.Tensor, q: tuple[float, ...]) -> torch.Tensor:
    """(N, P) float values -> (N, len(q)) per-row percentiles, linearly interpolated as numpy's default.

    The two order statistics around each percentile come from a partial ``topk`` of the nearer tail
    (half a percent of the pixels for the window's bounds), so no row is ever fully sorted.
    """
    count = flat.shape[-1]
    columns = []
    for percent in q:
        position = percent / 100.0 * (count - 1)
        below = min(int(position), count - 1)
        above = min(below + 1, count - 1)
        if percent <= 50.0:  # the (below+1)-th and (above+1)-th smallest, ascending
            tail = flat.topk(above + 1, dim=-1, largest=False).values
            low, high = tail[..., below], tail[..., above]
        else:  # the same order statistics counted from the top, descending
            tail = flat.topk(count - below, dim=-1, largest=True).values
            low, high = tail[..., count - 1 - below], tail[..., count - 1 - above]
        columns.append(torch.lerp(low, high, torch.full_like(low, position - below)))
    return torch.stack(columns, dim=-1)


def window_intensities(batch: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) scans of any dtype -> float32 on the same device, each scan windowed on its own
    percentiles and mapped to roughly [-2, 2].

    Each scan is windowed on its own percentiles, so a 12-bit rig, a 16-bit detector and a float
    export of the same weld land on the same scale; polarity is left alone (the model learns it).
    A constant scan becomes zeros.
    """
    x = batch.float()
    bounds = percentiles(x.reshape(len(x), -1), (LOW_PERCENTILE, HIGH_PERCENTILE))
    low, high = bounds[:, :1, None, None], bounds[:, 1:, None, None]  # (N, 1, 1, 1) each
    scale = high - low
    live = scale > 0  # a constant scan maps to zeros
    gain = torch.where(live, 4.0 / torch.where(live, scale, torch.ones_like(scale)), torch.zeros_like(scale))
    # clip(x, low, high) - low, scaled to [0, 4], then shifted to [-2, 2]: four passes over the pixels
    return (x - low).mul_(gain).clamp_(0.0, 4.0).sub_(live.float() * 2.0)


def as_channels(image: np.ndarray) -> np.ndarray:
    """H x W or C x H x W -> C x H x W (a view); anything else is refused."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"a scan must be H x W or C x H x W, got shape {array.shape}")
    return array


def normalise_scan(image: np.ndarray) -> np.ndarray:
    """Any H x W or C x H x W scan (uint8, uint16, float) -> float32 C x H x W, by ``window_intensities``
    (on one CPU thread, see ``weldstream.threads``)."""
    array = np.ascontiguousarray(as_channels(image), dtype=np.float32)
    with one_thread():
        return window_intensities(torch.from_numpy(array)[None])[0].numpy()


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
