"""The training loss: class-balanced cross-entropy for every pixel plus soft Dice so thin, rare defects
still count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Each class's cross-entropy weight: (background share / its share in the batch) ** BALANCE_POWER, between
# 1 and BALANCE_CAP. Defect classes are a few tenths of a percent of the pixels each, so they count about
# ten times a background pixel. Unweighted, a class that a new domain draws differently (lack of fusion:
# an echo on the fusion plane of a PE B-scan, a thin dark line on a steel radiograph's side wall) could
# stay merged into a look-alike class for the whole of a domain's steps: on `bench cl`, seeds 0 and 1,
# lack of fusion was never found on any radiograph (IoU 0) and those seeds ended 9 points lower.
BALANCE_POWER = 0.5
BALANCE_CAP = 10.0


def class_weights(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) integer classes -> (K,) cross-entropy weights from the batch's own class shares.
    Classes absent from the batch, and every class of a batch without background, weigh 1."""
    counts = torch.bincount(target.reshape(-1), minlength=num_classes)[:num_classes].float()
    share = counts / counts.sum().clamp_min(1.0)
    ratio = share[0] / share.clamp_min(1e-12)
    weights = ratio.pow(BALANCE_POWER).clamp(1.0, BALANCE_CAP)
    return torch.where((counts > 0) & (share[0] > 0), weights, torch.ones_like(weights))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0,
                      balanced: bool = True) -> torch.Tensor:
    """logits (N, K, H, W), target (N, H, W) integer classes -> scalar loss.

    Defects cover well under 5 % of a scan; plain cross-entropy learns "all background" first. The
    cross-entropy weighs each class by its rarity in the batch (``class_weights``), so every defect
    pixel keeps a gradient that does not vanish; the soft Dice term over the defect classes (background
    excluded) keeps small cracks in the gradient.
    """
    target = target.long()
    weight = class_weights(target, logits.shape[1]).to(logits.dtype) if balanced else None
    ce = F.cross_entropy(logits, target, weight=weight)
    if dice_weight == 0:
        return ce
    probs = logits.softmax(dim=1)[:, 1:]  # (N, K-1, H, W)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1.0) / (denominator + 1.0)
    return ce + dice_weight * (1 - dice.mean())
