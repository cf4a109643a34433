"""How unsure the model is of a mask: one score per scan and per region, from the softmax it already has.

A pixel's doubt is its predictive entropy over log(classes): 0 when one class takes all the probability,
1 when every class is as likely. A scan's doubt is the mean over the pixels that matter to an
inspector:

- the pixels predicted as a defect and a neighbourhood of ``DILATION`` pixels around them (is this a
  crack, is it porosity, where does it end?), together with
- the scan's ``TOP_SHARE`` most uncertain pixels (at least ``MIN_TOP`` of them), where a defect may
  have been missed.

So a scan with no predicted defect is judged by its most uncertain pixels, and a confident model on a
clean scan doubts little, while an untrained model, whose softmax is near uniform everywhere, doubts
everything (close to 1). Everything runs on the model's device, batched, on the maps the forward pass
produced.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

DILATION = 3  # pixels of neighbourhood around predicted defects
TOP_SHARE = 0.01  # share of a scan's pixels taken as its most uncertain
MIN_TOP = 16


def scan_doubt(classes: Tensor, entropy: Tensor, dilation: int = DILATION, top_share: float = TOP_SHARE,
               min_top: int = MIN_TOP) -> Tensor:
    """classes (N, H, W) integer class map, entropy (N, H, W) normalised -> (N,) doubt in [0, 1]."""
    n = entropy.shape[0]
    flat = entropy.reshape(n, -1)
    k = min(flat.shape[1], max(min_top, int(flat.shape[1] * top_share)))
    defects = (classes > 0).float()[:, None]
    if dilation > 0:
        defects = F.max_pool2d(defects, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    weights = (defects[:, 0].reshape(n, -1) > 0).float()  # (N, H*W) 1 where attended
    if k > 0:
        weights.scatter_(1, flat.topk(k, dim=1).indices, 1.0)  # exactly k most uncertain pixels, ties or not
    return (flat * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

