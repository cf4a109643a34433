"""A cheap summary of what a scan looks like to the model, for drift: every encoder stage's features pooled.

Why this summary: the U-Net's encoder stages are what the decoder reads to find defects (its skip
connections take every stage, not only the deepest), so a shift in them is a shift the model feels.
The shallow stages describe texture, gain and noise (what changes with a new probe, rig or film), the
deep ones the content; each stage is averaged over the scan's positions, so the summary costs nothing
beyond the forward pass that serving runs anyway (the server reads it with a hook on that pass) and
does not depend on the scan's size. Measured on the simulator, the deepest stage alone hardly tells
the domains apart, while the shallow stages do by a factor of 5 to 30 (docs/benchmarks/review/), so
the distance in server/drift.py weighs every stage the same, whatever its channel count.

The learner stores, per domain it has learned, the per-channel mean and standard deviation of this
summary over the domain's held-out scans in each version's manifest (``metrics["feature_reference"]``);
the server compares the scans of each rig with them (server/drift.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from weldstream.polarity import canonical_input
from weldstream.preprocess import pad_to_multiple

REFERENCE_KEY = "feature_reference"


@contextmanager
def pooled_features(module: nn.Module | None) -> Iterator[list[Tensor]]:
    """While open, every forward pass of ``module`` appends its encoder stages' features averaged over
    positions and concatenated, (N, C) float32, to the yielded list. Models without an ``encoder`` (and
    None) yield nothing. The serving head (weldstream.tiles.ServingHead) opens it around its module's
    pass, so the summary is an output of that pass on every backend: eager torch, CUDA graphs (the hook
    runs while the graph is captured) and ONNX (the exporter traces through the hook, so the pooled
    features are an output of the exported graph)."""
    captured: list[Tensor] = []
    encoder = getattr(module, "encoder", None)
    if encoder is None:
        yield captured
        return

    def keep(_module: nn.Module, _inputs: object, features: list[Tensor]) -> None:
        captured.append(_pooled(features))

    handle = encoder.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def _pooled(features: list[Tensor]) -> Tensor:
    """Stage 0 is the input itself; every later stage's channels averaged over positions, concatenated."""
    return torch.cat([f.float().mean(dim=(2, 3)) for f in features[1:]], dim=1)


def stage_channels(module: nn.Module) -> tuple[int, ...]:
    """Channels of each stage in the summary (smp encoders list them in ``out_channels``)."""
    return tuple(getattr(getattr(module, "encoder", None), "out_channels", (0,))[1:])


@torch.inference_mode()
def encoder_summary(module: nn.Module, images: Tensor, stride: int, batch_size: int = 32) -> Tensor:
    """images (N, C, H, W) normalised, one size -> (N, C_enc) summaries, as the server computes them for
    scans that fit one tile. Runs in eval mode and restores the module's mode after."""
    was_training = module.training
    module.eval()
    rows = []
    for start in range(0, len(images), batch_size):
        padded = pad_to_multiple(images[start:start + batch_size], stride)
        rows.append(_pooled(module.encoder(canonical_input(module, padded))))
    module.train(was_training)
    return torch.cat(rows)


def reference_of(summaries: Tensor, stages: tuple[int, ...] = ()) -> dict[str, list[float] | list[int] | int]:
    """The statistics a manifest keeps for one domain: per-channel mean and standard deviation, and the
    channels of each stage."""
    def short(values: Tensor) -> list[float]:  # 5 significant digits keep manifests small
        return [float(f"{v:.5g}") for v in values.tolist()]

    return {"mean": short(summaries.mean(dim=0)), "std": short(summaries.std(dim=0, unbiased=len(summaries) > 1)),
            "n": len(summaries), "stages": list(stages)}
