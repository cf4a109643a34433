"""One continual-learning training step: GEM with rehearsal, GEM, A-GEM, replay or naive fine-tuning,
readable top to bottom.

``gem_step`` does, in this order and nowhere else:
  0. rehearsal (``replay-gem``, ``replay``): memory scans of the past domains join the current batch,
     and the batch is augmented if a transform is given;
  1. memory gradients for the past domains (the domains in memory that the batch does not come from);
  2. zero_grad, so nothing from an earlier step leaks into this one (memory gradients never enter p.grad);
  3. forward and backward on the (rehearsed) batch;
  4. dot products of the current gradient with the memory gradients;
  5. projection if a constraint is violated, written back into ``p.grad``;
  6. gradient clipping if configured, then ``optimizer.step()``.

Exact GEM (``refresh="every_step"``) pays one extra forward/backward per past domain per step. With
``refresh="round_robin"`` only the stalest past domain's reference gradient is recomputed each step
and the others are reused from ``ReferenceGradients``, so a step costs about two forward/backwards
however many domains the memory holds; each reference is at most (number of past domains) steps old.
Memory batches run in train mode like the current batch, so BatchNorm statistics also see past domains.

Why rehearsal first and projection only where forgetting is measured (the default, ``replay-gem``):
projection alone only forbids steps that raise a past domain's loss, so the past domains are never
trained again and a new domain is learned under constraints with nothing to balance them; rehearsal
alone trains past domains but can let an update trade one away for the new one. Under a step budget
plain rehearsal keeps every past domain (``weldstream bench cl``: replay BWT +10 over six domains), and
an earlier ``replay-gem`` that split every step into a balanced current/rehearsal loss and refreshed a
reference gradient each step ended 4 points below plain replay (27.4 ± 0.3 against 31.3 ± 1.8, 3 seeds)
at 1.7x its step time. So ``replay-gem`` is now:

- every step is a plain replay step (one pooled loss over the current and the rehearsed crops), until
- a forgetting probe, every ``probe_every`` steps, measures each past domain's loss on a fixed probe
  (its first ``memory_batch`` memory scans, no gradient, no random draw: the same scans every time),
  smoothed over probes; once it has risen ``forgetting_tolerance`` above its best, that domain is
  guarded:
- while any domain is guarded, its reference gradient is refreshed (round robin among the guarded
  ones) and the step is split: the current crops' loss and the rehearsed crops' loss each get half,
  the current part is projected (GEM's QP) so it does not raise a guarded domain's loss, and the
  rehearsal part is added back unprojected. A domain whose probe loss comes back within the tolerance
  is released and its reference dropped.

Where rehearsal alone holds, the step costs what replay's does (plus one forward of the probes every
``probe_every`` steps) and learns exactly what replay learns; the projection is paid where it earns it.

The guarantee and the optimiser: the projection makes ``<g̃, G_k> >= 0`` for the gradient handed to
the optimiser (``StepStats.min_dot`` exports the smallest product, so the promise can be watched). SGD
moves along ``-g̃`` and keeps it to first order; Adam(W) rescales each coordinate by its running
second moment, so its update direction can still have a negative product with a past domain's
gradient. The learner keeps AdamW deliberately (it learns these scans several times faster per step
than SGD) and relies on rehearsal for the rest; ``tests/test_replay_gem.py`` measures both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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

STRATEGIES = ("replay-gem", "gem", "agem", "replay", "naive")
REHEARSING = ("replay-gem", "replay")  # memory scans mixed into every batch
PROJECTING = ("replay-gem", "gem")  # one reference gradient per past domain, GEM's QP
REFRESH_POLICIES = ("round_robin", "every_step")

LossFn = Callable[[Tensor, Tensor], Tensor]
Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class StepConfig:
    strategy: str = setting("replay-gem", choices=STRATEGIES,
                            help="continual-learning step: replay-gem (rehearsal, plus GEM projection where a "
                                 "probe measures forgetting), gem, agem, replay or naive")
    # 4 keeps a GEM step under 2x a naive one.
    memory_batch: int = setting(4, help="memory scans per reference gradient (per past domain for GEM)")
    rehearsal: int = setting(8, help="memory scans of past domains mixed into every batch (replay, replay-gem)")
    margin: float = 0.5  # GEM's lower bound on the dual variables (reference code's memory_strength)
    # replay-gem: every probe_every steps each past domain's loss on its fixed probe is measured (smoothed
    # over probes with loss_smoothing); a domain is guarded while it is this far above its best (relative).
    # Under plain rehearsal the probe losses of bench cl's step-bound stream peak 24-34 % above their best
    # (seed 0) while every old domain ends higher than it was learned: at 0.2 the gate opened there and
    # cost 3 points of ACC, so it waits for a rise rehearsal does not already undo.
    forgetting_tolerance: float = 0.5
    loss_smoothing: float = 0.5
    probe_every: int = 10
    eps: float = 1e-3  # ridge added to G Gᵀ, relative to the mean of its diagonal (so it scales with |g|)
    clip_norm: float | None = 1.0
    refresh: str = setting("round_robin", choices=REFRESH_POLICIES,
                           help="GEM reference gradients: one past domain per step (default) or all every step")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        if self.refresh not in REFRESH_POLICIES:
            raise ValueError(f"unknown refresh {self.refresh!r}; choose one of {list(REFRESH_POLICIES)}")
        if self.memory_batch < 1 or self.rehearsal < 0:
            raise ValueError(f"memory_batch must be >= 1 and rehearsal >= 0, got {self.memory_batch}, {self.rehearsal}")
        if self.probe_every < 1 or not 0 <= self.loss_smoothing < 1:
            raise ValueError(f"probe_every must be >= 1 and loss_smoothing in [0, 1), got {self.probe_every}, "
                             f"{self.loss_smoothing}")
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
    past_domains: int  # domains in memory other than the batch's (0 for naive)
    min_dot: float | None = None  # smallest <g̃, G_k> after projection (None without reference gradients)
    rehearsed: int = 0  # memory scans in the batch
    guarded: int = 0  # past domains whose measured forgetting switched projection on (replay-gem)


class ReferenceGradients:
    """Cache of one flattened memory gradient per domain: a (domains, P) tensor on the model's device, and
    replay-gem's forgetting records.

    The gradients are a cache, not state: they are not checkpointed, and after a restart round robin
    refills them within (number of past domains) steps. The forgetting records are state
    (``probe_state``): each past domain's best probe loss was measured on weights that no longer exist,
    so a restart that dropped them would forget how far a domain had already slid.
    """

    def __init__(self) -> None:
        self.step = 0  # advanced by every gem_step
        self._domains: list[str] = []
        self._computed_at: list[int] = []
        self._grads: Tensor | None = None  # (domains, P)
        # Memory loss per domain, smoothed over probes, and the lowest it has been: the gate. The mark is
        # what the loss was measured on (the domain's count of scans shown): a new mark starts over.
        self._loss: dict[str, float] = {}
        self._best: dict[str, float] = {}
        self._mark: dict[str, int] = {}

    def __contains__(self, domain: str) -> bool:
        return domain in self._domains

    def computed_at(self, domain: str) -> int | None:
        """The step a domain's reference gradient was computed at, None if never."""
        return self._computed_at[self._domains.index(domain)] if domain in self._domains else None

    def stalest(self, domains: Sequence[str]) -> str:
        """Next domain to refresh: one never computed first, else the oldest (ties: first in order)."""
        return min(domains, key=lambda d: -1 if d not in self else self._computed_at[self._domains.index(d)])

    def observe_loss(self, domain: str, loss: float, smoothing: float = 0.5, mark: int | None = None) -> None:
        """Fold one probe's loss into the domain's running loss (and its best so far). A ``mark`` that
        differs from the last one (the probe's scans changed) starts the domain's record over."""
        if mark is not None and self._mark.get(domain, mark) != mark:
            self._loss.pop(domain, None)
            self._best.pop(domain, None)
        if mark is not None:
            self._mark[domain] = mark
        previous = self._loss.get(domain)
        current = loss if previous is None else smoothing * previous + (1 - smoothing) * loss
        self._loss[domain] = current
        self._best[domain] = min(current, self._best.get(domain, current))

    def forgetting(self, domain: str) -> float:
        """How far the domain's running memory loss has risen above its best, relative (0: not at all)."""
        if domain not in self._loss:
            return 0.0
        return self._loss[domain] / max(self._best[domain], 1e-12) - 1.0

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

    def probed(self, domain: str) -> bool:
        return domain in self._loss

    def discard(self, domain: str) -> None:
        """Drop one domain's cached gradient (a released guard: the next guard starts from a fresh one)."""
        if domain not in self._domains:
            return
        i = self._domains.index(domain)
        del self._domains[i], self._computed_at[i]
        assert self._grads is not None
        self._grads = torch.cat([self._grads[:i], self._grads[i + 1 :]]) if self._domains else None

    def probe_state(self) -> dict[str, Any]:
        """The forgetting records and the step count, for the learner's checkpoint."""
        return {"step": self.step, "loss": dict(self._loss), "best": dict(self._best), "mark": dict(self._mark)}

    def load_probe_state(self, state: dict[str, Any]) -> None:
        """Restore ``probe_state`` (the gradient cache starts empty and refills)."""
        self.clear()
        self.step = int(state.get("step", self.step))
        self._loss = {str(k): float(v) for k, v in state.get("loss", {}).items()}
        self._best = {str(k): float(v) for k, v in state.get("best", {}).items()}
        self._mark = {str(k): int(v) for k, v in state.get("mark", {}).items()}

    def clear(self) -> None:
        """Forget every cached gradient and loss record (e.g. after loading other weights); the step count
        is kept."""
        self._domains, self._computed_at, self._grads = [], [], None
        self._loss, self._best, self._mark = {}, {}, {}


def gem_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[Tensor, Tensor],
    memory: ReplayMemory,
    cfg: StepConfig,
    current_domain: str | Collection[str],
    references: ReferenceGradients,
    loss_fn: LossFn = segmentation_loss,
    transform: Transform | None = None,
) -> StepStats:
    """One training step on batch = (x (B, C, H, W), y (B, H, W)) from ``current_domain`` (or domains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    if not model.training:
        model.train()  # memory and current batches both run in train mode
    t_start = _clock(device)
    current = {current_domain} if isinstance(current_domain, str) else set(current_domain)
    past = [] if cfg.strategy == "naive" else [d for d in memory.domains() if d not in current]

    # (0) Rehearsal: past domains' memory scans join the batch, then the whole batch is augmented.
    rehearsed = 0
    if cfg.strategy in REHEARSING and past and cfg.rehearsal:
        xm, ym = memory.sample(cfg.rehearsal, domain=past)
        x, y = torch.cat([x, xm.to(x.dtype)]), torch.cat([y, ym.to(y.dtype)])
        rehearsed = len(xm)
    if transform is not None:
        x, y = transform(x, y)

    # (1) Memory gradients: one per past domain (GEM), one per guarded past domain (replay-gem, after its
    # forgetting probe), or one over all past domains (A-GEM).
    G: Tensor | None = None  # (t, P)
    rows: list[int] = []  # the rows of G that constrain this step
    guarded: list[str] = []
    if cfg.strategy == "replay-gem" and past:
        guarded = _guarded_domains(model, memory, past, references, cfg, loss_fn)
        if guarded:
            stale = references.stalest(guarded)
            xm, ym = memory.sample(cfg.memory_batch, domain=stale)
            references.store(stale, _loss_gradient(model, params, xm, ym, loss_fn)[0])
            G = references.matrix(guarded)
            rows = list(range(len(G)))
    elif cfg.strategy == "gem" and past:
        stale = past if cfg.refresh == "every_step" else [references.stalest(past)]
        # Draw every memory batch before the first backward so the draws never wait on the GPU.
        memory_batches = {domain: memory.sample(cfg.memory_batch, domain=domain) for domain in stale}
        for domain, (xm, ym) in memory_batches.items():
            references.store(domain, _loss_gradient(model, params, xm, ym, loss_fn)[0])
        known = [d for d in past if d in references]
        G = references.matrix(known)
        rows = list(range(len(known)))
    elif cfg.strategy == "agem" and past:
        xm, ym = memory.sample(cfg.memory_batch, domain=past)
        G = _loss_gradient(model, params, xm, ym, loss_fn)[0][None]  # (1, P)
        rows = [0]
    t_memory = _clock(device)

    # (2) Clear every parameter's gradient (not only the optimizer's): the last step's are still there.
    model.zero_grad(set_to_none=True)

    # (3) Forward and backward on the batch: one pooled loss, except while replay-gem guards a past domain:
    # then the current crops and the rehearsed ones each get half, only the current part goes into p.grad
    # (to be projected) and the rehearsal part is kept aside.
    logits = model(x)  # (B, K, H, W)
    rehearsal_grad: Tensor | None = None
    if cfg.strategy == "replay-gem" and rehearsed and rows:
        b = len(x) - rehearsed
        current_loss, rehearsal_loss = loss_fn(logits[:b], y[:b]), loss_fn(logits[b:], y[b:])
        loss = 0.5 * (current_loss + rehearsal_loss)
        rehearsal_grad = _flat_grad(0.5 * rehearsal_loss, params, retain_graph=True)
        (0.5 * current_loss).backward()
    else:
        loss = loss_fn(logits, y)
        loss.backward()
    t_backward = _clock(device)

    # (4) Dot products <g, G_k>; a negative one means this step would raise that memory's loss.
    violations, projected, min_dot = 0, False, None
    if G is not None:
        g = flatten_grads(params)  # (P,)
        dots = memory_dot_products(g, G)
        violations = int((dots[rows] < 0).sum()) if rows else 0

        # (5) Project onto the feasible cone and write the result back into p.grad; replay-gem then adds
        # its rehearsal part back. min_dot is taken on the projected gradient (replay-gem: its current part
        # while it guards, the whole update otherwise).
        if violations:
            if cfg.strategy == "agem":
                g, projected = project_agem(g, G[0])
            else:
                g, projected = project_gem(g, G[rows], margin=cfg.margin, eps=cfg.eps)
            dots = memory_dot_products(g, G)
        min_dot = float(dots.min())
        if rehearsal_grad is not None:
            g = g + rehearsal_grad
        if projected or rehearsal_grad is not None:
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
        min_dot=min_dot,
        rehearsed=rehearsed,
        guarded=len(guarded),
    )


def _guarded_domains(model: nn.Module, memory: ReplayMemory, past: Sequence[str], references: ReferenceGradients,
                     cfg: StepConfig, loss_fn: LossFn) -> list[str]:
    """replay-gem's gate: the past domains whose probe loss has risen ``forgetting_tolerance`` above its best.

    Every ``probe_every`` steps (and at once for a past domain never probed) each past domain's fixed probe
    is scored without a gradient, in train mode like the reference gradients, with BatchNorm's running
    statistics left alone. A domain that is no longer guarded loses its cached reference gradient.
    """
    due = references.step % cfg.probe_every == 0
    probe = [d for d in past if due or not references.probed(d)]
    if probe:
        seen = memory.seen()
        device = next(model.parameters()).device
        with torch.no_grad(), frozen_batch_statistics(model):
            for domain in probe:
                xm, ym = memory.first(cfg.memory_batch, domain)
                loss = float(loss_fn(model(xm.to(device)), ym.to(device)))
                references.observe_loss(domain, loss, cfg.loss_smoothing, mark=seen[domain])
    guarded = [d for d in past if references.forgetting(d) > cfg.forgetting_tolerance]
    for domain in past:
        if domain not in guarded:
            references.discard(domain)
    return guarded


def _flat_grad(loss: Tensor, params: list[nn.Parameter], retain_graph: bool = False) -> Tensor:
    """d loss / d params as one flat vector (P,), without touching p.grad."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def _loss_gradient(
    model: nn.Module, params: list[nn.Parameter], x: Tensor, y: Tensor, loss_fn: LossFn
) -> tuple[Tensor, float]:
    """Flattened gradient (P,) and value of the loss on one memory batch, without touching p.grad.

    The pass runs in train mode (batch statistics, like the training batch) but leaves BatchNorm's
    running statistics alone: a pure past-domain batch every step would otherwise drag the statistics
    the served model normalises with towards the old domains, and the new domain would score as if
    it were barely learned.
    """
    device = params[0].device  # a no-op when the memory lives on the model's device, as it should
    with frozen_batch_statistics(model):
        loss = loss_fn(model(x.to(device)), y.to(device))
        return _flat_grad(loss, params), float(loss.detach())


@contextmanager
def frozen_batch_statistics(model: nn.Module) -> Iterator[None]:
    """Normalise with batch statistics but do not fold them into the running ones (momentum 0)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def _clock(device: torch.device) -> float:
    """Wall time after the device's queued work has finished, so phase timings are honest on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
