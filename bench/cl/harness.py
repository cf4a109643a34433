"""The benchmark's own training loop for naive fine-tuning, joint training, experience replay and weldstream GEM.

Naive and weldstream GEM run exactly the learner's step: ``gem_step`` (strategy "naive" or "gem"), then
``memory.add`` of the batch just trained, as ``weldstream.learner.trainer.ContinualLearner.train`` does.
Experience replay uses the same ``ReplayMemory`` (reservoir, per-domain budget): each step concatenates
the current batch with ``memory_batch`` scans drawn uniformly from the past domains' memory and takes
one step on the joint batch. Joint training is cumulative: at domain i it trains ``epochs`` passes over
the pooled, shuffled train sets of domains 0..i, continuing from the previous model, so every row of
its accuracy matrix is an upper bound for what could be known at that point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from weldstream.bench.cl.config import BenchConfig
from weldstream.bench.cl.result import RunResult, record_baseline, record_row
from weldstream.bench.cl.stream import Stream
from weldstream.bench.cl.timing import StepLog, StepTime, now
from weldstream.losses import segmentation_loss
from weldstream.model import ModelConfig, build_model
from weldstream.replay import ReferenceGradients, ReplayMemory, StepConfig, gem_step

SETUPS = {
    "naive": "weldstream gem_step(strategy='naive'): plain fine-tuning, domain after domain",
    "joint": "cumulative joint training: at domain i, all train scans of domains 0..i pooled and shuffled",
    "replay": "experience replay on weldstream ReplayMemory: current batch + memory_batch past-domain scans, one step",
    "weldstream-gem": "weldstream gem_step(strategy='gem', refresh='round_robin') + memory.add per batch (the learner)",
    "weldstream-gem-exact": "weldstream gem_step(strategy='gem', refresh='every_step'): every past domain's reference "
                            "gradient recomputed every step (textbook GEM) + memory.add per batch",
}
GEM_REFRESH = {"weldstream-gem": "round_robin", "weldstream-gem-exact": "every_step"}


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of full batches (a ragged tail is dropped, as for every strategy)."""
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def run_weldstream(name: str, cfg: BenchConfig, stream: Stream, seed: int,
                   progress: Callable[[int], None] = lambda n: None) -> tuple[RunResult, StepLog]:
    """Train ``name`` over the stream; fill the result's accuracy matrices and the step log."""
    model = build_model(ModelConfig(), seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    memory = ReplayMemory(cfg.memory_per_domain, device="cpu", seed=seed)
    references = ReferenceGradients()
    step_cfg = StepConfig(strategy="gem" if name in GEM_REFRESH else "naive", memory_batch=cfg.memory_batch,
                          margin=cfg.gem_margin, clip_norm=cfg.clip_norm,
                          refresh=GEM_REFRESH.get(name, "round_robin"))
    generator = torch.Generator().manual_seed(seed)
    result = RunResult(name, seed, stream.names, setup=SETUPS[name])
    log = StepLog()
    record_baseline(result, model, stream)

    for i, domain in enumerate(stream.domains):
        if name == "joint":
            x_pool = torch.cat([d.x_train for d in stream.domains[: i + 1]])
            y_pool = torch.cat([d.y_train for d in stream.domains[: i + 1]])
        else:
            x_pool, y_pool = domain.x_train, domain.y_train
        past = [d.name for d in stream.domains[:i]]
        for _ in range(cfg.epochs):
            for x, y in batches(x_pool, y_pool, cfg.batch_size, generator):
                if name == "replay":
                    log.add(_replay_step(model, optimizer, x, y, memory, past, domain.name, cfg, i))
                elif name == "joint":
                    log.add(_plain_step(model, optimizer, x, y, cfg, i))
                else:
                    log.add(_learner_step(model, optimizer, x, y, memory, step_cfg, domain.name, references, i,
                                          add_to_memory=name in GEM_REFRESH))
                progress(1)
        record_row(result, model, stream)
    return result, log


def _learner_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                  memory: ReplayMemory, step_cfg: StepConfig, domain: str, references: ReferenceGradients,
                  index: int, add_to_memory: bool) -> StepTime:
    """The learner's step: gem_step, then the batch joins the episodic memory."""
    stats = gem_step(model, optimizer, (x, y), memory, step_cfg, domain, references, loss_fn=segmentation_loss)
    t0 = now()
    if add_to_memory:
        memory.add(x, y, domain)
    add_s = now() - t0
    overhead = stats.memory_s + stats.projection_s + add_s
    update = stats.total_s - stats.memory_s - stats.forward_backward_s - stats.projection_s
    return StepTime(index, stats.total_s + add_s, stats.forward_backward_s, overhead, update)


def _plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                cfg: BenchConfig, index: int) -> StepTime:
    t0 = now()
    optimizer.zero_grad(set_to_none=True)
    segmentation_loss(model(x), y).backward()
    t1 = now()
    _clip_and_step(model, optimizer, cfg)
    t2 = now()
    return StepTime(index, t2 - t0, t1 - t0, 0.0, t2 - t1)


def _replay_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                 memory: ReplayMemory, past: list[str], domain: str, cfg: BenchConfig, index: int) -> StepTime:
    """One step on the current batch plus a uniform draw from the past domains' memory, then remember."""
    t0 = now()
    if past:
        xm, ym = memory.sample(cfg.memory_batch, domain=past)  # (m, C, H, W), (m, H, W)
        x, y = torch.cat([x, xm]), torch.cat([y, ym.to(y.dtype)])
    t1 = now()
    optimizer.zero_grad(set_to_none=True)
    segmentation_loss(model(x), y).backward()
    t2 = now()
    _clip_and_step(model, optimizer, cfg)
    t3 = now()
    memory.add(x[: cfg.batch_size], y[: cfg.batch_size], domain)
    t4 = now()
    return StepTime(index, t4 - t0, t2 - t1, (t1 - t0) + (t4 - t3), t3 - t2)


def _clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: BenchConfig) -> None:
    if cfg.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
    optimizer.step()
