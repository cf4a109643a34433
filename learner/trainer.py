"""The learner's training state and its step: model, optimiser, episodic memory, pending scans."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from weldstream.learner.config import LearnerConfig
from weldstream.learner.records import LabeledSample
from weldstream.model import build_model
from weldstream.replay import ReferenceGradients, ReplayMemory, StepStats, gem_step


@dataclass(frozen=True)
class Batch:
    domain: str
    x: torch.Tensor  # (B, C, H, W)
    y: torch.Tensor  # (B, H, W)
    labeled_at: list[float]


class ContinualLearner:
    """Owns everything a training step touches; the Kafka loop only feeds it samples."""

    def __init__(self, cfg: LearnerConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.model = build_model(cfg.model, seed=cfg.seed).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate)
        self.memory = ReplayMemory(cfg.memory_per_domain, device=device, seed=cfg.seed)
        self.references = ReferenceGradients()
        self.pending: deque[LabeledSample] = deque()
        self.steps = 0
        self.projected_steps = 0
        self.last_arrival = time.monotonic()
        # Label times of scans trained since the last publish, for freshness accounting.
        self.label_times: list[float] = []

    def add(self, sample: LabeledSample) -> None:
        self.pending.append(sample)
        self.last_arrival = time.monotonic()

    def next_batch(self) -> Batch | None:
        """Up to batch_size consecutive pending scans of one domain, once the batch is complete.

        A batch is complete when full, when the next pending scan belongs to another domain (drift),
        or when the stream has been quiet for idle_flush_s.
        """
        if not self.pending:
            return None
        domain = self.pending[0].domain
        count = 0
        for sample in self.pending:
            if sample.domain != domain or count == self.cfg.batch_size:
                break
            count += 1
        complete = count == self.cfg.batch_size or count < len(self.pending)
        if not complete and time.monotonic() - self.last_arrival < self.cfg.idle_flush_s:
            return None
        samples = [self.pending.popleft() for _ in range(count)]
        return Batch(domain, torch.stack([s.x for s in samples]), torch.stack([s.y for s in samples]),
                     [s.labeled_at for s in samples])

    def train(self, batch: Batch) -> list[StepStats]:
        """`passes` continual-learning steps on the batch, then the batch joins the episodic memory."""
        x, y = batch.x.to(self.device), batch.y.to(self.device)
        stats = []
        for _ in range(self.cfg.passes):
            step = gem_step(self.model, self.optimizer, (x, y), self.memory, self.cfg.step, batch.domain,
                            self.references)
            self.steps += 1
            self.projected_steps += int(step.projected)
            stats.append(step)
        self.memory.add(x, y, batch.domain)
        self.label_times.extend(t for t in batch.labeled_at if t > 0)
        return stats

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "memory": self.memory.state_dict(),
            "pending": list(self.pending),
            "steps": self.steps,
            "projected_steps": self.projected_steps,
            "label_times": list(self.label_times),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.memory.load_state_dict(state["memory"], device=self.device)
        self.references.clear()
        self.pending = deque(state["pending"])
        self.steps = state["steps"]
        self.projected_steps = state["projected_steps"]
        self.label_times = list(state["label_times"])
