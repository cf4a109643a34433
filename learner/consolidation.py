"""The offline pass: train on everything labeled so far, then publish through the online learner's guard.

Strategies: Avalanche's ``ewc``, ``si`` and ``lfl`` (domain by domain, one experience each), ``replay``
(domain by domain, the learner's replay step with its episodic memory) and ``joint`` (every domain at
once, i.i.d.: also how a new installation trains its first real version from a folder of scans).

The job starts from the served version (or fresh weights), trains in units (a domain, or a joint
epoch) and saves its progress after each unit, so a stopped job resumes where it was when run again
with the same settings and the same data. The result is judged against what the servers serve now,
on the learner's own held-out scans, and published as ``consolidate-<strategy>`` with the version it
started from as its parent; the online learner adopts it when it is announced.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weldstream.announcements import announce_once
from weldstream.datasets import local_folder
from weldstream.learner.augment import augment
from weldstream.learner.checkpoint import load_checkpoint, save_checkpoint
from weldstream.learner.config import LearnerConfig
from weldstream.learner.consolidate_config import ConsolidateConfig
from weldstream.learner.corpus import Corpus, read_folder, read_labeled_topic
from weldstream.learner.crops import cut_crop, defect_pixels
from weldstream.learner.progress import progress_bar
from weldstream.learner.publisher import CONSOLIDATED, Decision, Publisher
from weldstream.learner.records import LabeledSample
from weldstream.learner.trainer import auto_crop_size
from weldstream.model import ModelConfig, build_model, resolve_device
from weldstream.polarity import LEARNING_RATE, POLARITY_KEY, DomainPolarity, crops_per_domain, teach_step
from weldstream.registry import Round, best_effort, open_configured
from weldstream.replay import ReferenceGradients, ReplayMemory, StepConfig, gem_step
from weldstream.stores import VersionStore, configured_store

log = logging.getLogger(__name__)
PROGRESS_FILE = "consolidation-progress.pt"
DEFECT_SHARE = 0.7  # share of crops centred on a defect, as the learner cuts them
# Teaching the polarity head before the network trains: steps, and labeled scans of each domain cut for it.
POLARITY_STEPS = 150
POLARITY_SCANS = 64


class Stopped(Exception):
    """The job was asked to stop; its progress up to the last finished unit is saved."""


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    started_from: int
    steps: int
    units: int
    resumed_units: int
    train_seconds: float


class Consolidation:
    """One job's training state; ``run()`` trains every unit not done yet, then judges and publishes."""

    def __init__(self, cfg: ConsolidateConfig, corpus: Corpus, store: VersionStore, device: torch.device,
                 stop: threading.Event, progress: Callable[[int, int], None] = lambda done, total: None) -> None:
        self.cfg, self.corpus, self.store, self.device, self.stop = cfg, corpus, store, device, stop
        self.progress = progress
        smallest = min(min(s.x.shape[-2:]) for samples in corpus.train.values() for s in samples)
        self.crop = cfg.crop_size or auto_crop_size(device, smallest, smallest)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.domains = list(corpus.train)
        self.units = [f"epoch {i + 1}" for i in range(cfg.epochs)] if cfg.strategy == "joint" else self.domains
        self.signature = {"config": {k: v for k, v in asdict(cfg).items() if k in SIGNED}, "data": corpus.fingerprint(),
                          "domains": self.domains, "crop": self.crop}
        self.path = Path(cfg.model_dir) / PROGRESS_FILE
        self._saved = None if cfg.restart else load_checkpoint(self.path, device)
        if self._saved is not None and self._saved["signature"] != self.signature:
            log.warning("saved progress in %s is of another job (settings or data differ); starting afresh",
                        self.path)
            self._saved = None
        # A resumed job goes on from the version it started from, whatever has been served since.
        served = store.served()
        if self._saved is not None:
            self.started_from = int(self._saved["started_from"])
        else:
            self.started_from = 0 if cfg.from_scratch or served is None else served
        stored = store.load(self.started_from, map_location=device) if self.started_from else None
        self.model_config = stored.model_config if stored else ModelConfig()
        self.model: nn.Module = build_model(self.model_config, seed=cfg.seed).to(device)
        if stored is not None:
            self.model.load_state_dict(stored.state_dict)
        self.steps = 0
        self.polarity = DomainPolarity()  # filled when the job runs

    # -- batches
    def _crops(self, samples: list[LabeledSample], per_scan: int) -> tuple[Tensor, Tensor]:
        """``per_scan`` crops of every scan (most on a defect), at least one batch of them."""
        xs, ys = [], []
        for sample in samples:
            defects = defect_pixels(sample.y)
            for _ in range(per_scan):
                on_defect = bool(float(torch.rand(1, generator=self.generator)) < DEFECT_SHARE)
                x, y = cut_crop(sample.x, sample.y, defects, self.crop, on_defect, self.generator)
                xs.append(x)
                ys.append(y)
        while len(xs) < self.cfg.batch_size:
            xs, ys = xs * 2, ys * 2
        return torch.stack(xs), torch.stack(ys)

    def _batches_per_pass(self, scans: int) -> int:
        return max(self.cfg.batch_size, scans * self.cfg.crops_per_scan) // self.cfg.batch_size

    def total_steps(self) -> int:
        cfg, scans = self.cfg, [len(self.corpus.train[d]) for d in self.domains]
        if cfg.strategy == "joint":
            return cfg.epochs * self._batches_per_pass(sum(scans))
        return cfg.epochs * sum(self._batches_per_pass(n) for n in scans)

    def _stepped(self) -> None:
        self.steps += 1
        self.progress(self.steps, self.total_steps())
        if self.stop.is_set():
            raise Stopped

    # -- training
    def run(self) -> Outcome:
        started = time.monotonic()
        done = self._resume()
        resumed = done
        self._observe_polarity()
        if not done:  # a resumed job's saved model carries the head it was taught
            self._teach_polarity()
        trainer = self._avalanche_trainer() if self.cfg.strategy in ("ewc", "si", "lfl") else self._step_trainer()
        if done:
            trainer.load(self.saved["trainer"])
        for index in range(done, len(self.units)):
            trainer.train_unit(index)
            save_checkpoint(self.path, {"signature": self.signature, "started_from": self.started_from,
                                        "done": index + 1, "steps": self.steps,
                                        "offsets": self.corpus.offsets,
                                        "model": trainer.model_state(), "trainer": trainer.state(),
                                        "generator": self.generator.get_state()})
            log.info("consolidation %s: unit %d/%d (%s) done, %d steps", self.cfg.strategy, index + 1,
                     len(self.units), self.units[index], self.steps)
        model = trainer.unet()
        return Outcome(self._judge_and_publish(model), self.started_from, self.steps, len(self.units), resumed,
                       time.monotonic() - started)

    def _observe_polarity(self) -> None:
        """Which way each domain's defects read, from every labeled scan of the job (weldstream.polarity)."""
        self.polarity = DomainPolarity()
        for domain in self.domains:
            for sample in self.corpus.train[domain]:
                self.polarity.observe(domain, sample.x, sample.y)

    def _teach_polarity(self) -> None:
        """Teach the model's polarity head which domains to invert before the network trains: a job from
        scratch starts with a head that keeps every scan, and one from a version re-learns what the whole
        corpus shows."""
        head = getattr(self.model, "polarity", None)
        if head is None:
            return
        dark = set(self.polarity.dark_domains())
        if not dark:
            return
        known = [d for d in self.domains if self.polarity.dark(d) is not None]
        crops = {d: self._crops(self.corpus.train[d][:POLARITY_SCANS], 1)[0].to(self.device) for d in known}
        optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
        per_domain = crops_per_domain(len(known))
        for _ in range(POLARITY_STEPS):
            chosen = {d: c[torch.randint(len(c), (per_domain,), generator=self.generator)] for d, c in crops.items()}
            loss = teach_step(head, optimizer, chosen, dark, self.generator)
        log.info("polarity head taught to invert %s (%d steps, loss %.3f)", ", ".join(sorted(dark)), POLARITY_STEPS,
                 loss)

    def _resume(self) -> int:
        self.saved: dict[str, Any] = {}
        state, self._saved = self._saved, None
        if state is None:
            return 0
        self.saved = state
        self.steps = state["steps"]
        self.generator.set_state(state["generator"])
        log.info("resuming: %d of %d units done (%d steps)", state["done"], len(self.units), self.steps)
        return int(state["done"])

    def _step_trainer(self) -> StepTrainer:
        return StepTrainer(self)

    def _avalanche_trainer(self) -> Any:
        from weldstream.learner.avalanche_trainer import AvalancheTrainer

        return AvalancheTrainer(self)

    def _judge_and_publish(self, model: nn.Module) -> Decision:
        cfg = self.cfg
        guard = LearnerConfig(model_dir=cfg.model_dir, model=self.model_config, seed=cfg.seed,
                              regression_tolerance=cfg.regression_tolerance,
                              regression_confidence=cfg.regression_confidence)
        publisher = Publisher(guard, self.store, self.device)
        publisher.parent_version = self.started_from
        decision = publisher.judge(model, self.corpus.validation, seed=cfg.seed)
        if decision.promoted:
            decision = publisher.publish(
                model, decision, self.corpus.validation, strategy=CONSOLIDATED + cfg.strategy,
                offsets=self.corpus.offsets, newest_label_at=self.corpus.newest_label_at,
                metrics={"steps": self.steps, "scans_learned": self.corpus.scans(), "crop_size": self.crop,
                         "epochs": cfg.epochs, "domains": self.domains, "started_from": self.started_from,
                         POLARITY_KEY: self.polarity.summary()})
        self.path.unlink(missing_ok=True)
        return decision


class StepTrainer:
    """``joint`` and ``replay`` with the learner's own step (``replay.gem_step``) and augmentation."""

    def __init__(self, job: Consolidation) -> None:
        self.job = job
        cfg = job.cfg
        self.model = job.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
        self.memory = ReplayMemory(cfg.memory_per_domain, device=job.device, seed=cfg.seed)
        self.references = ReferenceGradients()
        replay = cfg.strategy == "replay"
        self.step_cfg = StepConfig(strategy="replay" if replay else "naive", rehearsal=cfg.rehearsal if replay else 0)

    def train_unit(self, index: int) -> None:
        job, cfg = self.job, self.job.cfg
        if cfg.strategy == "joint":
            samples = [s for d in job.domains for s in job.corpus.train[d]]
            self._passes(samples, job.domains, 1)
            return
        domain = job.domains[index]
        samples = job.corpus.train[domain]
        for sample in samples:  # one crop of each scan joins the memory, as in the learner
            x, y = job._crops([sample], 1)
            self.memory.add(x[:1].to(job.device), y[:1].to(job.device), domain)
        self._passes(samples, domain, cfg.epochs)

    def _passes(self, samples: list[LabeledSample], current: str | list[str], passes: int) -> None:
        job, batch = self.job, self.job.cfg.batch_size
        transform = partial(augment, generator=job.generator)
        for _ in range(passes):
            x, y = job._crops(samples, job.cfg.crops_per_scan)
            order = torch.randperm(len(x), generator=job.generator)
            for start in range(0, len(x) - batch + 1, batch):
                chosen = order[start:start + batch]
                gem_step(self.model, self.optimizer, (x[chosen].to(job.device), y[chosen].to(job.device)),
                         self.memory, self.step_cfg, current, self.references, transform=transform)
                job._stepped()

    def model_state(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "memory": self.memory.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(self.job.saved["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.memory.load_state_dict(state["memory"], device=self.job.device)

    def unet(self) -> nn.Module:
        return self.model


# The settings that change what a job learns: a saved run resumes only if they are all the same.
SIGNED = ("strategy", "epochs", "crops_per_scan", "batch_size", "learning_rate", "ewc_lambda", "si_lambda",
          "lfl_lambda", "memory_per_domain", "rehearsal", "from_scratch", "seed", "holdout_share", "crop_size")


async def consolidate(cfg: ConsolidateConfig, stop: threading.Event | None = None) -> Outcome:
    """Read everything labeled, train, judge, publish and announce; raises Stopped if stopped (resumable)."""
    stop = stop or threading.Event()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    store = configured_store(cfg.store, cfg.model_dir)
    started_at = time.time()
    if cfg.data:
        folder = await asyncio.to_thread(local_folder, cfg.data)  # a folder, or a dataset in a bucket
        corpus = await asyncio.to_thread(read_folder, folder, ModelConfig(), cfg.holdout_share)
    else:
        assert cfg.kafka is not None  # the config checks that one of the two is given
        corpus = await read_labeled_topic(cfg.kafka, cfg.topic, ModelConfig(), cfg.holdout_share,
                                          until=await asyncio.to_thread(_saved_offsets, cfg),
                                          security=cfg.kafka_security)
    if cfg.domains:
        corpus.only(cfg.domains)
    if not corpus.train:
        raise ValueError("nothing labeled to learn from")
    with progress_bar(cfg.progress, f"consolidate {cfg.strategy}") as progress:
        job = await asyncio.to_thread(Consolidation, cfg, corpus, store, device, stop, progress)
        outcome = await asyncio.to_thread(job.run)
    decision = outcome.decision
    registry = open_configured(cfg.registry, cfg.model_dir)
    try:
        if decision.manifest is not None:
            best_effort(registry, "record_version", decision.manifest)
        best_effort(registry, "record_round", Round(
            "consolidate", cfg.strategy, started_at, time.time() - started_at, scans=corpus.scans(),
            steps=outcome.steps, compared_with=decision.compared_with,
            outcome="promoted" if decision.promoted else "refused",
            version=decision.manifest.version if decision.manifest else None, reason=decision.reason,
            offsets=corpus.offsets, scores={d: asdict(s) for d, s in decision.scores.items()}))
    finally:
        if registry is not None:
            registry.close()
    if decision.manifest is not None and cfg.kafka:
        await announce_once(cfg.kafka, cfg.models_topic, decision.manifest, "publish", security=cfg.kafka_security)
    return outcome


def _saved_offsets(cfg: ConsolidateConfig) -> dict[int, int] | None:
    """Where a stopped run's replay ended, so its resumption learns from exactly the same records."""
    state = None if cfg.restart else load_checkpoint(Path(cfg.model_dir) / PROGRESS_FILE, torch.device("cpu"))
    if state is None or not state.get("offsets"):
        return None
    return {int(o["partition"]): int(o["offset"]) for o in state["offsets"] if o["topic"] == cfg.topic}
