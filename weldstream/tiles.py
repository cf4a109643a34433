"""Segment scans of any size with bounded memory: large scans run in overlapping tiles.

A 4096 x 4096 radiograph through the U-Net at once needs several GiB of activations; in tiles of
``TILE`` pixels it needs what one tile needs. Tiles overlap by ``2 * margin`` pixels and each pixel is
taken from the tile whose centre it is nearest, so every kept pixel sees at least ``margin`` pixels of
context on each side (the image border aside) and no seam falls where a tile lacked context. The
server and the learner's validation both run ``segment_maps`` (``segment`` is its classes and
confidence), so the score a version publishes is the score of the masks a rig receives.

What one pass gives is ``PixelMaps``: classes and confidence, and where asked the normalised predictive
entropy per pixel (doubt, server/doubt.py) and the encoder stages' pooled features (drift,
weldstream/features.py). ``ServingHead`` computes all of them inside one torch module, so eager torch
runs it, CUDA graphs capture it and the ONNX export carries it: every serving backend returns the
same four outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor, nn

from weldstream.features import pooled_features
from weldstream.preprocess import pad_to_multiple

TILE = 1024  # tile side in pixels; scans with no side above it run whole
MARGIN = 64  # context kept around every pixel taken from a tile


class PixelMaps(NamedTuple):
    """One pass over (N, C, H, W) scans, on their device."""

    classes: Tensor  # (N, H, W) uint8, the winning class
    confidence: Tensor  # (N, H, W) float32, its softmax probability
    entropy: Tensor | None = None  # (N, H, W) float32, predictive entropy / log(classes), in [0, 1]
    features: Tensor | None = None  # (N, C) float32, every encoder stage pooled (tiles averaged)


# padded images (N, C, H, W) -> PixelMaps at the same size (a Predictor may return only the first fields)
Predictor = Callable[[Tensor], tuple[Tensor | None, ...]]


def pixel_maps(logits: Tensor, with_entropy: bool = True) -> tuple[Tensor, ...]:
    """logits (N, K, H, W) -> the winning class (uint8), its softmax probability (float32) and, with
    ``with_entropy``, the predictive entropy over log(K) (float32, 0 certain, 1 a uniform guess).

    Written with reductions and elementwise operations rather than softmax and log_softmax over the class
    axis: exported to ONNX, those two ops along axis 1 took half of ONNX Runtime's time at 512x512 on the
    CPU (they transpose the maps), while these arithmetic steps are what the softmax computes anyway.
    """
    logits = logits.float()
    top, classes = logits.max(dim=1, keepdim=True)
    shifted = logits - top  # <= 0, the winner's entry exactly 0
    weights = shifted.exp()
    total = weights.sum(dim=1)  # >= 1: the winner contributes exp(0)
    confidence = total.reciprocal()  # the winner's softmax probability
    classes = classes.squeeze(1).to(torch.uint8)
    if not with_entropy:
        return classes, confidence
    # -sum p log p with p = w / total and log p = shifted - log total: log total - sum(w * shifted) / total
    # (exact where p underflows to 0: its term is 0 * a finite number), over log K so it lies in [0, 1]
    entropy = (total.log() - (weights * shifted).sum(dim=1) * confidence) / math.log(logits.shape[1])
    return classes, confidence, entropy.clamp(0.0, 1.0)


class ServingHead(nn.Module):
    """A segmentation module and everything the server reads from its pass, as plain tensors:
    forward(x) -> (classes, confidence[, entropy][, features]).

    Features come from a forward hook on the module's encoder (weldstream.features.pooled_features);
    modules without an ``encoder`` give none. ``autocast``: the dtype the module runs in on CUDA (None:
    fp32); the head after it always runs in fp32.
    """

    def __init__(self, module: nn.Module, with_entropy: bool = True, with_features: bool = True,
                 autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.module = module
        self.with_entropy = with_entropy
        self.with_features = with_features and getattr(module, "encoder", None) is not None
        self.autocast = autocast

    def forward(self, x: Tensor) -> tuple[Tensor | None, ...]:
        precision = torch.autocast(x.device.type, dtype=self.autocast) if self.autocast else nullcontext()
        with pooled_features(self.module if self.with_features else None) as captured, precision:
            logits = self.module(x)
        maps = pixel_maps(logits, self.with_entropy)
        if not captured:
            return maps
        return (*maps, captured[-1]) if self.with_entropy else (*maps, None, captured[-1])


def predictor_of(module: nn.Module, with_entropy: bool = False, with_features: bool = False) -> Predictor:
    """An eager module (eval mode) as a Predictor."""
    return ServingHead(module, with_entropy, with_features)


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
def segment(model: nn.Module | Predictor, images: Tensor, stride: int, tile: int = TILE, margin: int = MARGIN
            ) -> tuple[Tensor, Tensor]:
    """images (N, C, H, W) normalised -> classes (N, H, W) uint8 and confidence (N, H, W) float32 of the
    winning class, on the images' device (``segment_maps`` without entropy or features)."""
    maps = segment_maps(model, images, stride, tile, margin)
    return maps.classes, maps.confidence


@torch.inference_mode()
def segment_maps(model: nn.Module | Predictor, images: Tensor, stride: int, tile: int = TILE,
                 margin: int = MARGIN, with_entropy: bool = False, with_features: bool = False) -> PixelMaps:
    """images (N, C, H, W) normalised -> PixelMaps cropped to (H, W), on the images' device.

    ``model`` is an eval-mode module (then ``with_entropy`` and ``with_features`` say what else to
    compute) or a serving backend's Predictor (the server's eager, ONNX Runtime or CUDA-graph forward),
    which returns what its backend was built with; both run this same tiling. A tiled scan's features
    are the mean of its tiles' features, each tile weighing the same.
    """
    predict = predictor_of(model, with_entropy, with_features) if isinstance(model, nn.Module) else model
    height, width = images.shape[-2:]
    tile = max(stride, tile - tile % stride)
    if max(height, width) <= tile:
        maps = _crop(predict(pad_to_multiple(images, stride)), height, width)
        _require_entropy(maps, with_entropy)
        return maps
    out: PixelMaps | None = None
    tiles = 0
    for top, bottom, keep_top, keep_bottom in tile_spans(height, tile, margin):
        for left, right, keep_left, keep_right in tile_spans(width, tile, margin):
            part = images[..., top:bottom, left:right]
            maps = _crop(predict(pad_to_multiple(part, stride)), bottom - top, right - left)
            if out is None:
                _require_entropy(maps, with_entropy)
                out = PixelMaps(*(None if m is None else
                                  torch.zeros_like(m) if m.dim() == 2 else
                                  torch.empty((len(images), height, width), dtype=m.dtype, device=images.device)
                                  for m in maps))
            rows, cols = slice(keep_top - top, keep_bottom - top), slice(keep_left - left, keep_right - left)
            for whole, piece in zip(out, maps, strict=True):
                if piece is None:
                    continue
                if piece.dim() == 2:  # features: summed here, averaged below
                    whole += piece
                else:
                    whole[:, keep_top:keep_bottom, keep_left:keep_right] = piece[:, rows, cols]
            tiles += 1
    assert out is not None
    return out if out.features is None else out._replace(features=out.features / tiles)


def _crop(predicted: tuple[Tensor, ...], height: int, width: int) -> PixelMaps:
    maps = PixelMaps(*predicted)
    return PixelMaps(*(m if m is None or m.dim() == 2 else m[..., :height, :width] for m in maps))


def _require_entropy(maps: PixelMaps, with_entropy: bool) -> None:
    if with_entropy and maps.entropy is None:
        raise ValueError("entropy was asked for, but the predictor gives none")
