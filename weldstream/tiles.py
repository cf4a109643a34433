"""Segment scans of any size with bounded memory: large scans run in overlapping tiles.

A 4096 x 4096 radiograph through the U-Net at once needs several GiB of activations; in tiles of
``TILE`` pixels it needs what one tile needs. Tiles overlap by ``2 * margin`` pixels and each pixel is
taken from the tile whose centre it is nearest, so every kept pixel sees at least ``margin`` pixels of
context on each side (the image border aside) and no seam falls where a tile lacked context. The
server and the learner's validation both call ``segment``, so the score a version publishes is the
score of the masks a rig receives.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from weldstream.preprocess import pad_to_multiple

TILE = 1024  # tile side in pixels; scans with no side above it run whole
MARGIN = 64  # context kept around every pixel taken from a tile


def tile_spans(length: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: (tile start, tile end, kept start, kept end) per tile; the kept spans partition
    [0, length) and each lies at least ``margin`` inside its tile wherever the tile is not at the border."""
    if tile <= 2 * margin:
        raise ValueError(f"a tile of {tile} pixels cannot keep a margin of {margin} on both sides")
    if length <= tile:
        return [(0, length, 0, length)]
    step = tile - 2 * margin
    starts = list(range(0, length - tile, step)) + [length - tile]
    spans = []
    for i, start in enumerate(starts):
        keep_from = 0 if i == 0 else (starts[i - 1] + tile + start) // 2
        keep_to = length if i == len(starts) - 1 else (start + tile + starts[i + 1]) // 2
        spans.append((start, start + tile, keep_from, keep_to))
    return spans


@torch.inference_mode()
def segment(module: nn.Module, images: Tensor, stride: int, tile: int = TILE, margin: int = MARGIN
            ) -> tuple[Tensor, Tensor]:
    """images (N, C, H, W) normalised -> classes (N, H, W) uint8 and confidence (N, H, W) float32 of the
    winning class, on the images' device. The module must be in eval mode (the caller's choice)."""
    classes, confidence, _ = segment_with_entropy(module, images, stride, tile, margin, with_entropy=False)
    return classes, confidence


@torch.inference_mode()
def segment_with_entropy(module: nn.Module, images: Tensor, stride: int, tile: int = TILE, margin: int = MARGIN,
                         with_entropy: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """As ``segment``, plus each pixel's predictive entropy (N, H, W) float32 divided by log(classes), so
    0 is certain and 1 is a uniform guess (None when ``with_entropy`` is False)."""
    height, width = images.shape[-2:]
    tile = max(stride, tile - tile % stride)
    if max(height, width) <= tile:
        return _pixel_maps(module, pad_to_multiple(images, stride), height, width, with_entropy)
    classes = torch.empty((len(images), height, width), dtype=torch.uint8, device=images.device)
    confidence = torch.empty((len(images), height, width), dtype=torch.float32, device=images.device)
    entropy = torch.empty_like(confidence) if with_entropy else None
    for top, bottom, keep_top, keep_bottom in tile_spans(height, tile, margin):
        for left, right, keep_left, keep_right in tile_spans(width, tile, margin):
            part = images[..., top:bottom, left:right]
            c, p, e = _pixel_maps(module, pad_to_multiple(part, stride), bottom - top, right - left, with_entropy)
            rows, cols = slice(keep_top - top, keep_bottom - top), slice(keep_left - left, keep_right - left)
            classes[:, keep_top:keep_bottom, keep_left:keep_right] = c[:, rows, cols]
            confidence[:, keep_top:keep_bottom, keep_left:keep_right] = p[:, rows, cols]
            if entropy is not None and e is not None:
                entropy[:, keep_top:keep_bottom, keep_left:keep_right] = e[:, rows, cols]
    return classes, confidence, entropy


def _pixel_maps(module: nn.Module, padded: Tensor, height: int, width: int, with_entropy: bool
                ) -> tuple[Tensor, Tensor, Tensor | None]:
    logits = module(padded)[..., :height, :width].float()
    probabilities = logits.softmax(dim=1)
    confidence, classes = probabilities.max(dim=1)
    entropy = None
    if with_entropy:
        # -sum p log p from log_softmax (exact where p underflows to 0), over log K so it lies in [0, 1]
        entropy = -(probabilities * logits.log_softmax(dim=1)).sum(dim=1) / math.log(logits.shape[1])
        entropy = entropy.clamp_(0.0, 1.0)
    return classes.to(torch.uint8), confidence, entropy
