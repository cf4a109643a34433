"""The training loss: each class's cross-entropy weight follows its rarity in the batch."""

from __future__ import annotations

import torch

from weldstream.losses import BALANCE_CAP, class_weights, segmentation_loss


def test_rare_classes_weigh_more_up_to_the_cap_and_absent_ones_weigh_one():
    y = torch.zeros(1, 100, 100, dtype=torch.long)
    y[0, :4, :] = 1  # 4 % of the pixels: about (96 / 4) ** 0.5 = 4.9
    y[0, 4, :10] = 2  # 0.1 %: far past the cap
    weights = class_weights(y, 5)
    assert weights[0] == 1.0
    assert abs(float(weights[1]) - (9590 / 400) ** 0.5) < 1e-4  # background 9,590 pixels, class 1 400
    assert weights[2] == BALANCE_CAP
    assert weights[3] == weights[4] == 1.0  # absent from the batch


def test_a_batch_without_background_is_not_reweighted():
    assert torch.equal(class_weights(torch.full((2, 8, 8), 3), 5), torch.ones(5))


def test_a_missed_rare_class_pulls_harder_than_unweighted():
    """A lack-of-fusion pixel that the model calls a crack: the balanced loss's gradient on its logit is
    larger, relative to the background pixels' gradients, than plain cross-entropy's."""
    y = torch.zeros(1, 32, 32, dtype=torch.long)
    y[0, 10, 5:15] = 3
    logits = torch.zeros(1, 5, 32, 32)
    logits[:, 0] = 4.0  # confident background everywhere ...
    logits[0, 1, 10, 5:15] = 6.0  # ... and "crack" on the flaw
    pulls = {}
    for balanced in (False, True):
        z = logits.clone().requires_grad_(True)
        segmentation_loss(z, y, dice_weight=0.0, balanced=balanced).backward()
        flaw = -z.grad[0, 3, 10, 5:15].mean()  # pull towards class 3 on the flaw
        elsewhere = z.grad[0, 1:, 20:, :].abs().mean()  # push on background pixels' defect logits
        pulls[balanced] = float(flaw / elsewhere)
    assert pulls[True] > 5 * pulls[False]


def test_the_loss_is_finite_on_an_all_background_batch():
    loss = segmentation_loss(torch.randn(2, 5, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long))
    assert torch.isfinite(loss)
