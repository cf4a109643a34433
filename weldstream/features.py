"""A cheap summary of what a scan looks like to the model, for drift: its deepest encoder features pooled.

Why this summary: the deepest feature map of the U-Net's encoder (320 channels for mobilenet_v2) is what
the decoder reads to find defects, so a shift in it is a shift the model will feel, while a shift
that the encoder maps away (a gain change it learned to ignore) does not alarm anyone. Averaged over
the scan's positions it costs nothing beyond the forward pass that serving runs anyway (the server
reads it with a hook on that pass), and it does not depend on the scan's size.

The learner stores, per domain it has learned, the per-channel mean and standard deviation of this
summary over the domain's held-out scans in each version's manifest (``metrics["feature_reference"]``);
the server compares the scans of each rig with them (server/drift.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from weldstream.preprocess import pad_to_multiple

REFERENCE_KEY = "feature_reference"


@contextmanager
def pooled_features(module: nn.Module) -> Iterator[list[Tensor]]:
    """While open, every forward pass of ``module`` appends its deepest encoder features averaged over
    positions, (N, C) float32, to the yielded list (several entries when a scan runs in tiles). Models
    without an ``encoder`` yield nothing."""
    captured: list[Tensor] = []
    encoder = getattr(module, "encoder", None)
    if encoder is None:
        yield captured
        return

    def keep(_module: nn.Module, _inputs: object, features: list[Tensor]) -> None:
        captured.append(features[-1].float().mean(dim=(2, 3)))

    handle = encoder.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def merge_tiles(captured: list[Tensor]) -> Tensor | None:
    """One (N, C) summary from the passes of one batch: tiles are averaged, each weighing the same."""
    if not captured:
        return None
    return torch.stack(captured).mean(dim=0)


@torch.inference_mode()
def encoder_summary(module: nn.Module, images: Tensor, stride: int, batch_size: int = 32) -> Tensor:
    """images (N, C, H, W) normalised, one size -> (N, C_enc) summaries, as the server computes them for
    scans that fit one tile. Runs in eval mode and restores the module's mode after."""
    was_training = module.training
    module.eval()
    rows = []
    for start in range(0, len(images), batch_size):
        padded = pad_to_multiple(images[start:start + batch_size], stride)
        rows.append(module.encoder(padded)[-1].float().mean(dim=(2, 3)))
    module.train(was_training)
    return torch.cat(rows)


def reference_of(summaries: Tensor) -> dict[str, list[float] | int]:
    """The statistics a manifest keeps for one domain: per-channel mean and standard deviation."""
    return {"mean": summaries.mean(dim=0).tolist(),
            "std": summaries.std(dim=0, unbiased=len(summaries) > 1).tolist(),
            "n": len(summaries)}
