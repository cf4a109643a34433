"""One continual-learning training step: GEM, A-GEM or naive fine-tuning, readable top to bottom.

``gem_step`` does, in this order and nowhere else:
  1. memory gradients for the past domains (the domains in memory other than the current one);
  2. zero_grad, so no memory gradient can leak into this step;
  3. forward and backward on the current batch;
  4. dot products of the current gradient with the memory gradients;
  5. projection if a constraint is violated, written back into ``p.grad``;
  6. gradient clipping if configured, then ``optimizer.step()``.

Exact GEM (``refresh="every_step"``) pays one extra forward/backward per past domain per step. With
``refresh="round_robin"`` only the stalest past domain's reference gradient is recomputed each step
and the others are reused from ``ReferenceGradients``, so a step costs about two forward/backwards
however many domains the memory holds; each reference is at most (number of past domains) steps old.
Memory batches run in train mode like the current batch, so BatchNorm statistics also see past domains.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weldstream.losses import segmentation_loss
from weldstream.replay.memory import ReplayMemory
from weldstream.replay.projection import (
    flatten_grads,
    memory_dot_products,
    project_agem,
    project_gem,
    write_grads,
)
from weldstream.settings import setting

STRATEGIES = ("gem", "agem", "naive")
REFRESH_POLICIES = ("round_robin", "every_step")

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepConfig:
    strategy: str = setting("gem", choices=STRATEGIES, help="continual-learning step")
    # 4 keeps a GEM step under 2x a naive one.
    memory_batch: int = setting(4, help="memory scans per reference gradient (per past domain for GEM)")
    margin: float = 0.5  # GEM's lower bound on the dual variables (reference code's memory_strength)
    eps: float = 1e-3  # ridge added to G Gᵀ
    clip_norm: float | None = 1.0
    refresh: str = setting("round_robin", choices=REFRESH_POLICIES,
                           help="GEM reference gradients: one past domain per step (default) or all every step")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        if self.refresh not in REFRESH_POLICIES:
            raise ValueError(f"unknown refresh {self.refresh!r}; choose one of {list(REFRESH_POLICIES)}")
        if self.memory_batch < 1:
            raise ValueError(f"memory_batch must be >= 1, got {self.memory_batch}")
        if self.margin < 0 or self.eps < 0:
            raise ValueError(f"margin and eps must be >= 0, got {self.margin} and {self.eps}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}")


@dataclass
class StepStats:
    loss: float
    projected: bool
    violations: int  # memory gradients with a negative dot product before projection
    forward_backward_s: float
    memory_s: float
    projection_s: float
    total_s: float
    past_domains: int  # domains in memory other than the current one (0 for naive)


class ReferenceGradients:
    """Cache of one flattened memory gradient per domain: a (domains, P) tensor on the model's device.

    A cache, not state: it is not checkpointed, and after a restart round robin refills it within
    (number of past domains) steps.
    """

    def __init__(self) -> None:
        self.step = 0  # advanced by every gem_step
        self._domains: list[str] = []
        self._computed_at: list[int] = []
        self._grads: Tensor | None = None  # (domains, P)

    def __contains__(self, domain: str) -> bool:
        return domain in self._domains

    def computed_at(self, domain: str) -> int | None:
        """The step a domain's reference gradient was computed at, None if never."""
        return self._computed_at[self._domains.index(domain)] if domain in self._domains else None

    def stalest(self, domains: Sequence[str]) -> str:
        """Next domain to refresh: one never computed first, else the oldest (ties: first in order)."""
        return min(domains, key=lambda d: -1 if d not in self else self._computed_at[self._domains.index(d)])

    def store(self, domain: str, grad: Tensor) -> None:
        if domain not in self._domains:
            row = grad.new_empty((1, grad.numel()))
            self._grads = row if self._grads is None else torch.cat([self._grads, row])
            self._domains.append(domain)
            self._computed_at.append(self.step)
        i = self._domains.index(domain)
        self._grads[i].copy_(grad)  # type: ignore[index]
        self._computed_at[i] = self.step

    def matrix(self, domains: Sequence[str]) -> Tensor:
        """(t, P) reference gradients of ``domains`` that have one, in the given order."""
        rows = [self._domains.index(d) for d in domains if d in self._domains]
        assert self._grads is not None and rows, "matrix() needs at least one stored domain"
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return self._grads[rows[0] : rows[0] + len(rows)]  # a view, no copy
        return self._grads[rows]

    def clear(self) -> None:
        """Forget every cached gradient (e.g. after loading other weights); the step count is kept."""
        self._domains, self._computed_at, self._grads = [], [], None


def gem_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[Tensor, Tensor],
    memory: ReplayMemory,
    cfg: StepConfig,
    current_domain: str,
    references: ReferenceGradients,
    loss_fn: LossFn = segmentation_loss,
) -> StepStats:
    """One training step on batch = (x (B, C, H, W), y (B, H, W)) from ``current_domain``."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    if not model.training:
        model.train()  # memory and current batches both run in train mode
    t_start = _clock(device)

    # (1) Memory gradients, one per past domain (GEM) or one over all past domains (A-GEM).
    past = [] if cfg.strategy == "naive" else [d for d in memory.domains() if d != current_domain]
    G: Tensor | None = None  # (t, P)
    if cfg.strategy == "gem" and past:
        stale = past if cfg.refresh == "every_step" else [references.stalest(past)]
        # Draw every memory batch before the first backward so the draws never wait on the GPU.
        memory_batches = {domain: memory.sample(cfg.memory_batch, domain=domain) for domain in stale}
        for domain, (xm, ym) in memory_batches.items():
            references.store(domain, _loss_gradient(model, params, xm, ym, loss_fn))
        G = references.matrix(past)  # round_robin: domains not yet computed join on later steps
    elif cfg.strategy == "agem" and past:
        xm, ym = memory.sample(cfg.memory_batch, domain=past)
        G = _loss_gradient(model, params, xm, ym, loss_fn)[None]  # (1, P)
    t_memory = _clock(device)

    # (2) Clear every parameter's gradient (not only the optimizer's): memory gradients end here.
    model.zero_grad(set_to_none=True)

    # (3) Forward and backward on the current batch.
    logits = model(x)  # (B, K, H, W)
    loss = loss_fn(logits, y)
    loss.backward()
    t_backward = _clock(device)

    # (4) Dot products <g, G_k>; a negative one means this step would raise that memory's loss.
    violations, projected = 0, False
    if G is not None:
        g = flatten_grads(params)  # (P,)
        violations = int((memory_dot_products(g, G) < 0).sum())

        # (5) Project onto the feasible cone and write the result back into p.grad.
        if violations:
            if cfg.strategy == "gem":
                g, projected = project_gem(g, G, margin=cfg.margin, eps=cfg.eps)
            else:
                g, projected = project_agem(g, G[0])
            write_grads(params, g)
    t_projection = _clock(device)

    # (6) Clip, then update.
    if cfg.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
    optimizer.step()
    references.step += 1
    t_end = _clock(device)

    return StepStats(
        loss=float(loss.detach()),
        projected=projected,
        violations=violations,
        forward_backward_s=t_backward - t_memory,
        memory_s=t_memory - t_start,
        projection_s=t_projection - t_backward,
        total_s=t_end - t_start,
        past_domains=len(past),
    )


def _loss_gradient(
    model: nn.Module, params: list[nn.Parameter], x: Tensor, y: Tensor, loss_fn: LossFn
) -> Tensor:
    """Flattened gradient (P,) of the loss on one memory batch; leaves it in p.grad for step 2 to clear."""
    device = params[0].device  # a no-op when the memory lives on the model's device, as it should
    model.zero_grad(set_to_none=True)
    loss_fn(model(x.to(device)), y.to(device)).backward()
    return flatten_grads(params)


def _clock(device: torch.device) -> float:
    """Wall time after the device's queued work has finished, so phase timings are honest on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
