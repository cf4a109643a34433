"""The training loss: cross-entropy for every pixel plus soft Dice so thin, rare defects still count."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """logits (N, K, H, W), target (N, H, W) integer classes -> scalar loss.

    Defects cover well under 5 % of a scan; plain cross-entropy learns "all background" first. The
    soft Dice term over the defect classes (background excluded) keeps small cracks in the gradient.
    """
    target = target.long()
    ce = F.cross_entropy(logits, target)
    if dice_weight == 0:
        return ce
    probs = logits.softmax(dim=1)[:, 1:]  # (N, K-1, H, W)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1.0) / (denominator + 1.0)
    return ce + dice_weight * (1 - dice.mean())
