"""The weights a learner publishes: an exponential moving average of the weights it trains.

A model trained at its peak learning rate wanders: on a 2-core CPU, while a second domain is learned,
the first domain's validation mIoU swings 67-76 from one judgement to the next, and the promotion guard
refuses every candidate that happens to sit in a trough. The average of the last few dozen steps' weights
(Polyak averaging) sits near the middle of that wander: measured in-process, the first domain held
75-77 while the second was learned about as fast as by the trained weights, without their dips.
Training continues on the trained weights; only judging and publishing see the average.

A new learner's average starts from random weights, whose share would linger for a few half-lives and
dull its first versions; as Adam does for its moments, that share is dropped (the first step is copied,
later ones weighted as if the average had always been running). Weights adopted from a consolidated
version are a trusted start and keep their share; a checkpoint keeps the count of steps averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def decay_for(half_life_steps: float) -> float:
    """The per-step decay under which an old step's weight halves every ``half_life_steps`` steps."""
    return 0.5 ** (1.0 / half_life_steps) if half_life_steps > 0 else 0.0


class WeightAverage:
    """An exponential moving average of a model's parameters and buffers, kept in a copy of the model.

    Floating-point tensors (parameters, BatchNorm's running statistics) are averaged; integer buffers
    (BatchNorm's step counters) follow the trained model. With a half-life of 0 the copy just follows.
    ``updates`` counts the steps averaged since an untrusted start (None after a trusted one).
    """

    def __init__(self, model: nn.Module, half_life_steps: float, *, trusted_start: bool = False) -> None:
        self.decay = decay_for(half_life_steps)
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.updates: int | None = None if trusted_start else 0

    def rate(self) -> float:
        """How far the next update moves the average towards the trained weights."""
        if self.updates is None:
            return 1.0 - self.decay
        # The start's share after n updates would be decay**n; dividing it out gives this rate.
        n = self.updates + 1
        return (1.0 - self.decay) / (1.0 - self.decay ** n)

    @torch.no_grad()
    def update(self, trained: nn.Module) -> None:
        """Move the average one step towards ``trained``."""
        rate = self.rate()
        for mine, theirs in zip(self.model.state_dict().values(), trained.state_dict().values(), strict=True):
            if mine.is_floating_point():
                mine.lerp_(theirs, rate)
            else:
                mine.copy_(theirs)
        if self.updates is not None:
            self.updates += 1

    @torch.no_grad()
    def reset(self, trained: nn.Module) -> None:
        """Forget the past: the average becomes ``trained`` (after adopting someone else's weights), a
        trusted start."""
        self.model.load_state_dict(trained.state_dict())
        self.updates = None
