"""Augmentation on the model's device: flips and gain/contrast jitter that keep each mask on its scan.

Rigs differ in gain curves, probe coupling and film density, so intensity jitter is the cheap way to
make a model less sensitive to the drift it will meet; a horizontal flip is a weld seen from the other
side. Shifts come from the random crops themselves (``crops``). Masks are only ever flipped with their
own image, never resampled, so class ids stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Augmentation:
    flip: float = 0.5  # chance of a horizontal flip per scan
    gain: float = 0.2  # contrast factor drawn from [1 - gain, 1 + gain]
    offset: float = 0.2  # brightness offset drawn from [-offset, offset] (normalised scans span about -2..2)
    noise: float = 0.05  # largest standard deviation of added Gaussian noise


def augment(x: Tensor, y: Tensor, generator: torch.Generator, cfg: Augmentation = Augmentation()
            ) -> tuple[Tensor, Tensor]:
    """x (B, C, H, W) float, y (B, H, W) -> augmented copies; the random draws come from ``generator``."""
    b = x.shape[0]
    flip = (torch.rand(b, generator=generator) < cfg.flip).to(x.device)
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    y = torch.where(flip.view(b, 1, 1), y.flip(-1), y)
    gain = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.gain
    offset = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg.offset
    sigma = torch.rand(b, 1, 1, 1, generator=generator) * cfg.noise
    noise = torch.randn(x.shape, generator=generator) * sigma
    x = x * gain.to(x.device) + offset.to(x.device) + noise.to(x.device)
    return x, y
