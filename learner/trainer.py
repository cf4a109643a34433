"""The learner's training state and its steps: model, optimiser, training window, episodic memory.

Training is driven by compute, not by arrivals: every labeled scan that joins the window earns
``max_steps_per_scan`` steps, and the learner spends that budget whenever it has compute, drawing fresh
augmented crops from the window (plus memory scans of past domains) for every step. When the stream
pauses, it keeps learning from what it has until the budget is spent, with the learning rate annealed
over the budget's last ``decay_steps`` steps; once it has been quiet for ``settle_after_s`` the budget
left shrinks to those steps, so the anneal starts then. New scans raise the budget and the rate again. What gets
judged and published is ``published``, an exponential average of the trained weights (``averaging.py``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from functools import partial

import torch

from weldstream.learner.augment import augment
from weldstream.learner.averaging import WeightAverage
from weldstream.learner.config import LearnerConfig
from weldstream.learner.crops import cut_crop
from weldstream.learner.records import LabeledSample
from weldstream.learner.window import TrainingWindow
from weldstream.model import build_model
from weldstream.polarity import LEARNING_RATE, DomainPolarity, crops_per_domain, load_weights, teach_step
from weldstream.replay import ReferenceGradients, ReplayMemory, StepStats, gem_step

log = logging.getLogger(__name__)

# Crop side when --crop-size is 0 (auto): small enough for a 2-core CPU to take several steps a second,
# large enough on a GPU to see a whole weld region at once.
AUTO_CROP = {"cpu": 96, "cuda": 256}
MIN_CROP = 32


def auto_crop_size(device: torch.device, height: int, width: int) -> int:
    """The device's crop side, no larger than the first scan (multiples of 32, the model's stride)."""
    side = AUTO_CROP.get(device.type, AUTO_CROP["cpu"])
    fits = max(MIN_CROP, (min(height, width) // MIN_CROP) * MIN_CROP)
    return min(side, fits)


class ContinualLearner:
    """Owns everything a training step touches; the Kafka loop only feeds it samples.

    Threads: ``add`` is called from the event loop (a deque append is atomic); everything else runs in
    one training thread at a time, or while no training runs (checkpoints, publishing).
    """

    def __init__(self, cfg: LearnerConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.model = build_model(cfg.model, seed=cfg.seed).to(device).train()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = self._new_optimizer()
        self.average = WeightAverage(self.model, cfg.average_half_life)
        self.memory = ReplayMemory(cfg.memory_per_domain, device=device, seed=cfg.seed)
        # Which domains' defects read dark, from their labels; the model's polarity head learns it.
        self.polarity = DomainPolarity()
        self.polarity_optimizer = self._new_polarity_optimizer()
        self.references = ReferenceGradients()
        self.window = TrainingWindow(cfg.window_scans, cfg.window_mb << 20, device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.pending: deque[LabeledSample] = deque()
        self.crop_size = cfg.crop_size or 0  # 0 until the first scan fixes it (auto)
        self.steps = 0
        self.budget = 0  # steps earned so far; the learner trains while steps < budget
        self.projected_steps = 0
        self.scans_learned = 0
        self.last_arrival: float | None = None  # monotonic time the last scan joined the window
        # Label times of scans trained since the last publish, for freshness accounting.
        self.label_times: list[float] = []

    @property
    def published(self) -> torch.nn.Module:
        """The weights a candidate version carries: the average of the trained ones."""
        return self.average.model

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the segmentation network; the polarity head has its own loss and optimiser."""
        params = [p for name, p in self.model.named_parameters() if not name.startswith("polarity.")]
        return torch.optim.AdamW(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)

    def _new_polarity_optimizer(self) -> torch.optim.Optimizer | None:
        head = getattr(self.model, "polarity", None)
        return torch.optim.Adam(head.parameters(), lr=LEARNING_RATE) if head is not None else None

    def adopt(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Continue from another trainer's weights (a consolidated version). The window, the memory and
        the step budget stay; the optimiser starts afresh (its moments belonged to the old weights), the
        average restarts from the new weights and GEM's reference gradients are recomputed on them."""
        load_weights(self.model, state_dict)
        self.average.reset(self.model)
        self.optimizer = self._new_optimizer()
        self.polarity_optimizer = self._new_polarity_optimizer()
        self.references.clear()

    # -- the event loop's side
    def add(self, sample: LabeledSample) -> None:
        self.pending.append(sample)

    def has_work(self) -> bool:
        return bool(self.pending) or (self.remaining() > 0 and len(self.window) > 0)

    def remaining(self) -> int:
        return max(0, self.budget - self.steps)

    # -- the training thread's side
    def absorb(self) -> int:
        """Move arrived scans into the window and the memory, earning their steps; returns how many."""
        absorbed = 0
        while self.pending:
            sample = self.pending.popleft()
            if not self.crop_size:
                self.crop_size = auto_crop_size(self.device, *sample.x.shape[-2:])
            kept = self.window.add(sample.scan_id, sample.x, sample.y, sample.domain)
            x, y = cut_crop(kept.x, kept.y, kept.defects, self.crop_size,
                            on_defect=bool(float(torch.rand(1, generator=self.generator)) < self.cfg.defect_share),
                            generator=self.generator)
            self.memory.add(x[None], y[None], sample.domain)
            was_dark = self.polarity.dark(sample.domain)
            self.polarity.observe(sample.domain, kept.x, kept.y)
            if self.polarity.dark(sample.domain) and not was_dark:
                log.info("%s: its labeled defects read darker than their surroundings; the model learns to "
                         "invert its scans (weldstream.polarity)", sample.domain)
            if sample.labeled_at > 0:
                self.label_times.append(sample.labeled_at)
            # The budget never runs further ahead than the window can be learned from.
            cap = self.steps + self.cfg.max_steps_per_scan * self.cfg.window_scans
            self.budget = min(self.budget + self.cfg.max_steps_per_scan, cap)
            self.scans_learned += 1
            absorbed += 1
        if absorbed:
            self.last_arrival = time.monotonic()
        return absorbed

    def settle_if_paused(self, now: float | None = None) -> bool:
        """Once no scan has arrived for ``settle_after_s``, shrink the budget left to the anneal's
        ``decay_steps``: without this a burst's budget, up to a window's worth of steps, is spent at the
        peak rate before the anneal even starts. Once shrunk, only a new scan raises the budget above the
        anneal's steps again, so a pause shrinks it once. Returns whether it shrank the budget."""
        after = self.cfg.settle_after_s
        if not after or self.last_arrival is None or self.remaining() <= self.cfg.decay_steps:
            return False
        if (time.monotonic() if now is None else now) - self.last_arrival < after:
            return False
        log.info("no labeled scan for %.0f s: settling, the learning rate anneals over the last %d steps "
                 "(%d earned steps dropped)", after, self.cfg.decay_steps, self.remaining() - self.cfg.decay_steps)
        self.budget = self.steps + self.cfg.decay_steps
        return True

    def learning_rate(self) -> float:
        """Linear warm-up over the first steps, then annealed as the budget runs out."""
        cfg = self.cfg
        warm = min(1.0, (self.steps + 1) / max(1, cfg.warmup_steps))
        anneal = min(1.0, max(cfg.final_lr_share, self.remaining() / max(1, cfg.decay_steps)))
        return cfg.learning_rate * warm * anneal

    def train_for(self, max_steps: int, max_seconds: float) -> list[StepStats]:
        """Absorb arrivals, then step until the budget, ``max_steps`` or ``max_seconds`` runs out."""
        self.absorb()
        self.settle_if_paused()
        stats: list[StepStats] = []
        deadline = time.monotonic() + max_seconds
        while self.remaining() > 0 and len(self.window) and len(stats) < max_steps and time.monotonic() < deadline:
            stats.append(self.step())
        return stats

    def step(self) -> StepStats:
        """One step on augmented crops of the window, rehearsed and projected as the strategy says."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        x, y = self.window.sample(cfg.batch_size, self.crop_size, cfg.defect_share, self.generator)
        stats = gem_step(self.model, self.optimizer, (x, y), self.memory, cfg.step, self.window.domains(),
                         self.references, transform=partial(augment, generator=self.generator))
        self._train_polarity()
        self.average.update(self.model)
        self.steps += 1
        self.projected_steps += int(stats.projected)
        return stats

    def _train_polarity(self) -> None:
        """One step of the polarity head on memory crops of every domain whose labels have shown defects.
        Until some domain's defects read dark, the head is left at its start ("keep" for every scan), so
        the model is exactly its network."""
        head = getattr(self.model, "polarity", None)
        dark = set(self.polarity.dark_domains())
        if head is None or self.polarity_optimizer is None or not dark:
            return
        known = [d for d in self.memory.domains() if self.polarity.dark(d) is not None]
        per_domain = crops_per_domain(len(known))
        crops = {d: self.memory.sample(per_domain, domain=d)[0].to(self.device) for d in known}
        teach_step(head, self.polarity_optimizer, crops, dark, self.generator)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "average": self.average.model.state_dict(),
            "average_updates": self.average.updates,
            "optimizer": self.optimizer.state_dict(),
            "memory": self.memory.state_dict(),
            "window": self.window.state_dict(),
            "pending": list(self.pending),
            "crop_size": self.crop_size,
            "generator": self.generator.get_state(),
            "steps": self.steps,
            "budget": self.budget,
            "projected_steps": self.projected_steps,
            "scans_learned": self.scans_learned,
            "label_times": list(self.label_times),
            "forgetting_probe": self.references.probe_state(),
            "polarity": self.polarity.state_dict(),
            "polarity_optimizer": self.polarity_optimizer.state_dict() if self.polarity_optimizer else None,
        }

    def load_state_dict(self, state: dict) -> None:
        load_weights(self.model, state["model"])
        # Checkpoints written before averaging existed start the average at the trained weights.
        load_weights(self.average.model, state.get("average", state["model"]))
        self.average.updates = state.get("average_updates")
        self.optimizer.load_state_dict(state["optimizer"])
        self.memory.load_state_dict(state["memory"], device=self.device)
        self.window.load_state_dict(state["window"])
        # The same weights the probe measured: its records hold (checkpoints without them start over).
        self.references.load_probe_state(state.get("forgetting_probe", {}))
        self.pending = deque(state["pending"])
        self.crop_size = state["crop_size"]
        self.generator.set_state(state["generator"])
        self.steps = state["steps"]
        self.budget = state["budget"]
        self.projected_steps = state["projected_steps"]
        self.scans_learned = state["scans_learned"]
        self.label_times = list(state["label_times"])
        # A restart counts as an arrival: a pause that goes on after it settles a while later.
        self.last_arrival = time.monotonic()
        # Checkpoints written before the polarity head start it over; the labels in memory re-teach it.
        self.polarity.load_state_dict(state.get("polarity", {}))
        if self.polarity_optimizer is not None and state.get("polarity_optimizer"):
            self.polarity_optimizer.load_state_dict(state["polarity_optimizer"])
