"""The learner's state between messages, and the stages that change it: route a record, count training
steps, decide when a judgement is due, adopt consolidated versions, write the checkpoint.

Each stage is a plain method with no broker behind it, so tests can drive the pipeline record by record;
`loop.run` feeds it from Kafka, and `judging` turns its checkpoints into versions and commits.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import ConsumerRecord, TopicPartition

from weldstream.backoff import Backoff
from weldstream.errors import CorruptVersion, InvalidInput
from weldstream.learner.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from weldstream.learner.config import LearnerConfig
from weldstream.learner.holdout import ValidationSets, is_held_out
from weldstream.learner.ledger import Entry, Ledger
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.publisher import CONSOLIDATED, Publisher
from weldstream.learner.records import decode_record
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import resolve_device
from weldstream.registry import best_effort, open_configured
from weldstream.replay import StepStats
from weldstream.signing import read_key
from weldstream.stores import configured_store

log = logging.getLogger(__name__)


class LearnerLoop:
    """The state the loop carries between messages; each method is one stage of the pipeline."""

    def __init__(self, cfg: LearnerConfig, metrics: LearnerMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.device = resolve_device(cfg.device)
        self.store = configured_store(cfg.store, cfg.model_dir,
                                      read_key(cfg.signing_key_file) if cfg.signing_key_file else None)
        self.learner = ContinualLearner(cfg, self.device)
        self.validation = ValidationSets(cfg.validation_per_domain, cfg.validation_mb << 20)
        self.ledger = Ledger(cfg.model_dir)
        self.positions: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self.checkpointed: dict[TopicPartition, int] = {}  # positions as of the newest checkpoint
        self.committed: dict[TopicPartition, int] = {}  # positions as of the last successful commit
        self.known_domains: set[str] = set()
        self.progress_at = time.monotonic()
        self.steps_at_publish = 0
        self.steps_at_checkpoint = 0
        self.last_publish = time.monotonic()
        self.judging_s = 0.0  # how long the last checkpoint-and-judge took
        self.dirty = False  # consumed something not yet in a checkpoint
        self.scans_at_checkpoint = 0
        self.store_backoff = Backoff()  # while the weight store does not answer: when to judge again
        self.store_retry_at = 0.0
        self.publisher = Publisher(cfg, self.store, self.device)
        # The newest stored version already looked at for a consolidation to adopt. Not the parent version:
        # a consolidation that lands while the learner judges gets a lower number than the learner's own
        # next version, and must still be adopted.
        self.store_seen = self.publisher.parent_version
        self._restore()
        self.registry = open_configured(cfg.registry, cfg.model_dir)
        best_effort(self.registry, "sync", self.store)
        self.round_started = time.time()
        self.scans_at_round = self.learner.scans_learned
        self.steps_at_round = self.learner.steps

    def _restore(self) -> None:
        state = load_checkpoint(checkpoint_path(self.cfg.model_dir), self.device)
        if state is None:
            self._start_from_store()
            return
        # The version the checkpointed weights descend from (a consolidation published since then is
        # adopted afterwards, not taken for the learner's own).
        self.publisher.parent_version = state.get("parent_version", self.publisher.parent_version)
        self.store_seen = state.get("store_seen", self.publisher.parent_version)
        self.learner.load_state_dict(state["learner"])
        self.validation.load_state_dict(state["validation"])
        self.positions = {TopicPartition(t, p): o for (t, p), o in state["positions"].items()}
        self.checkpointed = dict(self.positions)
        self.known_domains = set(state.get("domains", ())) or self._domains_in_use()
        self.steps_at_publish = self.steps_at_checkpoint = self.learner.steps
        self.scans_at_checkpoint = self.learner.scans_learned
        log.info("resumed from checkpoint: step %d, %d steps of budget left, %d scans in the window, memory %s",
                 self.learner.steps, self.learner.remaining(), len(self.learner.window),
                 self.learner.memory.per_domain())

    def _start_from_store(self) -> None:
        """No checkpoint, but versions in the store (say a first version trained by `weldstream consolidate
        --strategy joint` on a new installation): learn on from the newest instead of from fresh weights,
        so the next version really descends from the parent it names."""
        if not self.publisher.parent_version:
            return
        try:
            stored = self.store.load(self.publisher.parent_version, map_location=self.device)
        except CorruptVersion as exc:
            log.error("cannot start from version %d (%s); starting from fresh weights", self.publisher.parent_version,
                      exc)
            self.publisher.parent_version = 0
            return
        self.learner.adopt(stored.state_dict)
        log.info("no checkpoint: learning on from version %d (%s)", stored.manifest.version,
                 stored.manifest.strategy or "unnamed strategy")

    def _domains_in_use(self) -> set[str]:
        learner = self.learner
        return {*learner.memory.domains(), *learner.window.domains(), *self.validation.domains(),
                *(sample.domain for sample in learner.pending)}

    def heartbeat(self) -> None:
        """The loop made progress; /healthz stays 200 while this keeps happening."""
        self.progress_at = time.monotonic()
        self.metrics.progress.set_to_current_time()

    def is_live(self) -> bool:
        return time.monotonic() - self.progress_at < self.cfg.liveness_timeout_s

    def check_domain(self, domain: str) -> None:
        """New domains are accepted up to cfg.max_domains and, with an allowlist, only those on it."""
        cfg = self.cfg
        if domain in self.known_domains:
            return
        if cfg.domain_allowlist and domain not in cfg.domain_allowlist:
            raise InvalidInput("domain", f"{domain!r} is not on the allowlist {list(cfg.domain_allowlist)}")
        if len(self.known_domains) >= cfg.max_domains:
            raise InvalidInput("domain", f"{domain!r} would be a new domain beyond the maximum of "
                                         f"{cfg.max_domains} (known: {sorted(self.known_domains)})")
        self.known_domains.add(domain)

    # -- stage 1: one Kafka record -> training sample, validation sample, or the error that dead-letters it
    def accept(self, message: ConsumerRecord) -> InvalidInput | None:
        """Route one record; an undecodable one returns its error (the caller dead-letters it first)."""
        cfg = self.cfg
        try:
            sample = decode_record(message.value, len(cfg.model.classes), cfg.model.in_channels, cfg.max_side)
            self.check_domain(sample.domain)
        except InvalidInput as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a decoder bug must cost one record, never the learner
            log.exception("decoding %s@%d:%d failed unexpectedly", message.topic, message.partition, message.offset)
            return InvalidInput("message", f"could not be decoded ({type(exc).__name__}: {exc})")
        use = "holdout" if is_held_out(sample.scan_id, cfg.holdout_share) else "train"
        if use == "holdout":
            self.validation.add(sample.scan_id, sample.domain, sample.x, sample.y)
        else:
            self.learner.add(sample)
        self.metrics.consumed.labels(use).inc()
        self.ledger.record(Entry(sample.scan_id, sample.domain, use, message.partition, message.offset))
        self.advance(message)
        return None

    def dead_lettered(self, message: ConsumerRecord, exc: InvalidInput, outcome: str = "dead_letter") -> None:
        """Account for a refused record: sent to the dead-letter topic, or skipped if even that failed."""
        self.metrics.consumed.labels(outcome).inc()
        if outcome == "dead_letter":
            self.metrics.dead_lettered.labels(exc.field.split(".")[0]).inc()
        scan_id = message.key.decode(errors="replace") if message.key else f"offset-{message.offset}"
        self.ledger.record(Entry(scan_id, "", outcome, message.partition, message.offset))
        self.advance(message)

    def advance(self, message: ConsumerRecord) -> None:
        self.positions[TopicPartition(message.topic, message.partition)] = message.offset + 1
        self.dirty = True

    # -- stage 2: training, driven by compute (``ContinualLearner.train_for`` runs in a worker thread)
    def record_steps(self, steps: list[StepStats]) -> None:
        m, learner = self.metrics, self.learner
        for stats in steps:
            m.steps.inc()
            m.projections.inc(int(stats.projected))
            m.loss.set(stats.loss)
            if stats.min_dot is not None:
                m.min_dot.set(stats.min_dot)
            for phase, seconds in (("forward_backward", stats.forward_backward_s), ("memory", stats.memory_s),
                                   ("projection", stats.projection_s), ("total", stats.total_s)):
                m.step_seconds.labels(phase).observe(seconds)
        current = set(learner.window.domains())
        for domain, fill in learner.memory.per_domain().items():
            m.memory_fill.labels(domain).set(fill)
            m.current_domain.labels(domain).set(1 if domain in current else 0)
        m.memory_bytes.set(learner.memory.nbytes())
        m.learning_rate.set(learner.learning_rate())
        m.window.set(len(learner.window))
        m.budget.set(learner.remaining())
        m.pending.set(len(learner.pending))
        if steps or learner.scans_learned != self.scans_at_checkpoint:
            self.dirty = True

    def publish_due(self) -> bool:
        """Every --publish-every-steps steps, once judging would take at most --judging-share of the time
        since the last judgement (--fresh-judging-share while labels learned since then wait to be served);
        or every --publish-every-s seconds, whichever comes first."""
        cfg = self.cfg
        if time.monotonic() < self.store_retry_at:
            return False  # the weight store did not answer the last judgement: back off
        steps = self.learner.steps - self.steps_at_publish
        elapsed = time.monotonic() - self.last_publish
        share = cfg.fresh_judging_share if self.learner.label_times else cfg.judging_share
        judging_paid = elapsed >= self.judging_s * (1 - share) / share
        return (steps >= cfg.publish_every_steps and judging_paid) or (
            elapsed >= cfg.publish_every_s and (steps > 0 or self.dirty))

    # -- stage 3: adopt a consolidated version from the store (``judging.publish`` does this before judging)
    def sync_with_store(self) -> int | None:
        """Adopt the newest consolidated version stored since the last look, and compare future candidates
        with what the servers serve now. Returns the adopted version, if any."""
        adopted = None
        versions = self.store.versions()
        for version in reversed(versions):
            if version <= self.store_seen:
                break
            if not self.store.manifest(version).strategy.startswith(CONSOLIDATED):
                continue
            try:
                stored = self.store.load(version, map_location=self.device)
            except CorruptVersion as exc:
                log.error("cannot adopt version %d: %s", version, exc)
                continue
            self.learner.adopt(stored.state_dict)
            self.publisher.adopt(version)
            self.dirty = True
            # The adopted weights were judged by the job that published them: only later steps are new.
            self.steps_at_publish = self.learner.steps
            adopted = version
            log.info("adopted consolidated version %d (%s); window %d scans, memory %s kept", version,
                     stored.manifest.strategy, len(self.learner.window), self.learner.memory.per_domain())
            best_effort(self.registry, "record_action", "adopt", version, None, "learner", stored.manifest.strategy)
            break
        self.store_seen = max(self.store_seen, versions[-1] if versions else 0)
        self.publisher.follow_served()
        return adopted

    def store_failed(self, exc: OSError) -> None:
        """The weight store did not answer: training and checkpoints go on; nothing is lost, since the newest
        candidate (which holds everything learned) is judged and published at a later judgement."""
        self.metrics.store_errors.inc()
        wait = self.store_backoff.failed()
        self.store_retry_at = time.monotonic() + wait
        log.warning("weight store %s failed (%s); training and checkpoints go on, judging again in %.0f s at the "
                    "earliest", self.store.root, exc, wait)

    def store_answered(self) -> None:
        if failures := self.store_backoff.reset():
            self.store_retry_at = 0.0
            log.info("weight store %s answers again after %d failed tries", self.store.root, failures)

    # -- stage 4: the checkpoint, which ``judging`` writes before it judges or commits anything
    async def checkpoint(self) -> bool:
        """Write everything consumed and learned so far; True if there was anything new to write."""
        if not self.dirty and self.learner.steps == self.steps_at_checkpoint:
            return False
        positions = dict(self.positions)
        state = {"learner": self.learner.state_dict(), "validation": self.validation.state_dict(),
                 "positions": {(tp.topic, tp.partition): o for tp, o in positions.items()},
                 "domains": sorted(self.known_domains), "parent_version": self.publisher.parent_version,
                 "store_seen": self.store_seen}
        await asyncio.to_thread(self.ledger.flush)
        await asyncio.to_thread(save_checkpoint, checkpoint_path(self.cfg.model_dir), state)
        self.checkpointed.clear()
        self.checkpointed.update((tp, o) for tp, o in positions.items() if tp in self.positions)
        self.dirty = False
        self.steps_at_checkpoint = self.learner.steps
        self.scans_at_checkpoint = self.learner.scans_learned
        return True
