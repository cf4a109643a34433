"""BatchNorm statistics measured from unlabeled scans, and a module served with statistics of its own.

A segmentation model's BatchNorm layers normalise every channel with the mean and variance of the scans
it was trained on. Scans from another rig (another probe, gain curve or bit depth) shift those moments;
re-estimating them from that rig's own scans, with no label and no gradient step, recovers much of the
lost accuracy (AdaBN) and touches no weight another rig uses.

How the moments are measured (``measure``): the scans run through a copy of the module whose BatchNorm
layers normalise with the statistics of the batch at hand (training mode with momentum 0, so the copy's
stored statistics never move), and every layer's input is summarised per channel by its mean and its
mean square. Summaries of many batches pool by their scan counts (``Moments.pooled``), so statistics
from 32 scans measured one at a time equal those of the 32 measured together up to the normalisation
of the deeper layers' inputs. A version's own statistics are ``Moments.of_version`` with a weight in
scans, which is how a rig's estimate starts and how it is blended by count.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer with running statistics, by its qualified name."""
    return [(name, layer) for name, layer in module.named_modules()
            if isinstance(layer, NORM_TYPES) and layer.track_running_stats and layer.running_mean is not None]


@dataclass(frozen=True)
class Moments:
    """Per BatchNorm layer the channel means (C,) and channel mean squares (C,) of its input, the mean
    over scans of each scan's squared channel mean (C,: how much scans differ from one another), and
    how many scans they summarise (fractional when a version's statistics are given a weight)."""

    mean: dict[str, Tensor]
    square: dict[str, Tensor]
    scans: float
    spread: dict[str, Tensor] | None = None  # None: unknown (a version's statistics)

    @classmethod
    def of_version(cls, module: nn.Module, weight: float) -> Moments:
        """The module's stored statistics as if they came from ``weight`` scans."""
        mean, square = {}, {}
        for name, layer in batchnorm_layers(module):
            m = layer.running_mean.detach().double().cpu()
            mean[name], square[name] = m, layer.running_var.detach().double().cpu() + m * m
        return cls(mean, square, float(weight))

    @classmethod
    def pooled(cls, parts: Iterable[Moments]) -> Moments:
        """The moments of all parts' scans together (each part weighs its scan count)."""
        parts = [p for p in parts if p.scans > 0]
        if not parts:
            raise ValueError("nothing to pool: every part summarises zero scans")
        total = sum(p.scans for p in parts)
        names = parts[0].mean.keys()
        mean = {n: sum(p.mean[n] * (p.scans / total) for p in parts) for n in names}
        square = {n: sum(p.square[n] * (p.scans / total) for p in parts) for n in names}
        spread = None
        if all(p.spread is not None for p in parts):
            spread = {n: sum(p.spread[n] * (p.scans / total) for p in parts) for n in names}  # type: ignore[index]
        return cls(mean, square, total, spread)

    def variance(self, name: str) -> Tensor:
        return (self.square[name] - self.mean[name] ** 2).clamp_min(0.0)

    def buffers(self, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """What to serve a module with: ``{layer.running_mean, layer.running_var}`` as float32."""
        out = {}
        for name, mean in self.mean.items():
            out[f"{name}.running_mean"] = mean.float().to(device)
            out[f"{name}.running_var"] = self.variance(name).float().to(device)
        return out

    def mismatch(self, scan: Moments) -> float:
        """How far one scan's channel means lie from those of the scans these moments summarise, in units
        of how much those scans' means spread: per layer the RMS over channels of the z-score, averaged
        over layers. A scan like the others sits near 1; a scan from another rig or probe lies far out.
        (The spread is floored at 0.01 % of the pixel variance, so a rig of near-identical scans does not
        make every small change an outlier.)"""
        if self.spread is None:
            raise ValueError("these moments do not record how scans spread (a version's statistics)")
        distances = []
        for name, mean in self.mean.items():
            between = (self.spread[name] - mean ** 2).clamp_min(0.0)
            z = (scan.mean[name] - mean) / (between + 0.0001 * self.variance(name) + 1e-8).sqrt()
            distances.append(float(z.pow(2).mean().sqrt()))
        return sum(distances) / max(len(distances), 1)

    def to_state(self) -> dict[str, object]:
        return {"mean": dict(self.mean), "square": dict(self.square), "scans": self.scans,
                "spread": dict(self.spread) if self.spread is not None else {}}

    @classmethod
    def from_state(cls, state: dict) -> Moments:
        return cls(dict(state["mean"]), dict(state["square"]), float(state["scans"]), dict(state["spread"]) or None)


def measuring_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose BatchNorm layers normalise with each batch's own statistics and never
    update their stored ones (``measure`` runs it; the original is untouched and may keep serving)."""
    twin = copy.deepcopy(module).eval()
    for _, layer in batchnorm_layers(twin):
        layer.train()
        layer.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: the stored statistics stay
    return twin


@torch.no_grad()
def measure(twin: nn.Module, images: Tensor) -> Moments:
    """The moments of a batch of normalised, padded images (N, C, H, W) in ``twin`` (a ``measuring_copy``);
    the batch is normalised as one, so pass one rig's scans of one size (the server passes one scan)."""
    mean: dict[str, Tensor] = {}
    square: dict[str, Tensor] = {}
    hooks = []
    for name, layer in batchnorm_layers(twin):
        def record(_: nn.Module, inputs: tuple[Tensor, ...], name: str = name) -> None:
            x = inputs[0].detach().double()
            dims = [d for d in range(x.dim()) if d != 1]
            mean[name] = x.mean(dim=dims).cpu()
            square[name] = (x * x).mean(dim=dims).cpu()
        hooks.append(layer.register_forward_pre_hook(record))
    try:
        twin(images)
    finally:
        for hook in hooks:
            hook.remove()
    spread = {name: m * m for name, m in mean.items()}  # exact for one scan; a batch counts as one
    return Moments(mean, square, float(images.shape[0]), spread)


def with_statistics(module: nn.Module, buffers: dict[str, Tensor], *args: Tensor, prefix: str = "") -> object:
    """``module(*args)`` with its BatchNorm statistics replaced by ``buffers`` for this call only (the
    module itself is not changed afterwards; not safe while another thread runs the same module)."""
    named = {f"{prefix}{k}": v for k, v in buffers.items()} if prefix else buffers
    return functional_call(module, named, args, strict=False)
