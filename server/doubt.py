"""How unsure the model is of a mask: one score per scan and per region, from the softmax it already has.

A pixel's doubt is its predictive entropy over log(classes): 0 when one class takes all the
probability, 1 when every class is as likely. A scan's doubt is the mean over all its pixels: how much
of the answer is a guess. A confident model on a scan like those it learned doubts little (about 0.01
on the simulator's learned domain), a rig it has never seen gets 0.2 to 0.5, and an untrained model,
whose softmax is near uniform everywhere, doubts everything (close to 1). A region's doubt is the mean
over its own pixels (server/regions.py), so a doubtful defect in an otherwise clear scan still shows.

Why the whole scan and not only the predicted defects and their surroundings: ranked by this mean,
the scans inspectors label first teach the learner more than a random choice, while ranked by the
doubt of the predicted defects' neighbourhood they taught it less (a model on a new rig is often
confidently blind there; docs/benchmarks/review/). Computed on the model's device, batched.
"""

from __future__ import annotations

from torch import Tensor


def scan_doubt(entropy: Tensor) -> Tensor:
    """entropy (N, H, W) normalised to [0, 1] -> (N,) doubt in [0, 1]."""
    return entropy.mean(dim=(1, 2))
