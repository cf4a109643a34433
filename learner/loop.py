"""The learner process: Kafka in, GEM steps, versions out. `run(cfg)` owns the consumer and producer.

Delivery: offsets are committed only after a checkpoint holding everything learned from (or still
pending for) those messages is on disk, so a crash at any point re-reads, and never skips, a scan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from weldstream.announcements import announce, follow_announcements
from weldstream.errors import CorruptVersion, InvalidInput
from weldstream.learner import kafka_io
from weldstream.learner.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from weldstream.learner.config import LearnerConfig
from weldstream.learner.holdout import ValidationSets, is_held_out
from weldstream.learner.ledger import Entry, Ledger
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.publisher import CONSOLIDATED, Decision, Publisher
from weldstream.learner.records import decode_record
from weldstream.learner.trainer import ContinualLearner
from weldstream.metrics_http import start_metrics_server
from weldstream.model import resolve_device
from weldstream.registry import Round, best_effort, open_configured
from weldstream.replay import StepStats
from weldstream.signing import read_key
from weldstream.topics import ensure_topics
from weldstream.weight_store import Manifest, WeightStore

log = logging.getLogger(__name__)
# One chunk of training between looks at the stream: short enough that publishing and checkpoints
# are never far off, long enough that the thread hand-off costs nothing.
STEPS_PER_CHUNK = 16
CHUNK_SECONDS = 1.0
TRAINING_POLL_MS = 50
IDLE_POLL_MS = 200


class LearnerLoop:
    """The state the loop carries between messages; each method is one stage of the pipeline."""

    def __init__(self, cfg: LearnerConfig, metrics: LearnerMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.device = resolve_device(cfg.device)
        self.store = WeightStore(cfg.model_dir, read_key(cfg.signing_key_file) if cfg.signing_key_file else None)
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
        since the last judgement; or every --publish-every-s seconds, whichever comes first."""
        cfg = self.cfg
        steps = self.learner.steps - self.steps_at_publish
        elapsed = time.monotonic() - self.last_publish
        judging_paid = elapsed >= self.judging_s * (1 - cfg.judging_share) / cfg.judging_share
        return (steps >= cfg.publish_every_steps and judging_paid) or (
            elapsed >= cfg.publish_every_s and (steps > 0 or self.dirty))

    # -- stage 3: validate, then publish or refuse (the caller announces, checkpoints and commits)
    async def publish(self) -> Manifest | None:
        """The newly published version's manifest, or None (nothing new to judge, or refused)."""
        manifest = None
        await asyncio.to_thread(self.sync_with_store)
        if self.learner.steps > self.steps_at_publish and self.validation.domains():
            offsets = [{"topic": tp.topic, "partition": tp.partition, "offset": o}
                       for tp, o in sorted(self.positions.items())]
            decision = await asyncio.to_thread(self._judge, offsets)
            self._record(decision)
            manifest = decision.manifest
            self.steps_at_publish = self.learner.steps
        self.last_publish = time.monotonic()
        return manifest

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

    def _judge(self, offsets: list[dict[str, int | str]]) -> Decision:
        """In a worker thread: judge (and maybe publish), and record the round."""
        decision = self.publisher.consider(self.learner, self.validation, offsets, version=self.store_seen + 1)
        now = time.time()
        version = decision.manifest.version if decision.manifest else None
        if decision.manifest is not None:
            best_effort(self.registry, "record_version", decision.manifest)
        best_effort(self.registry, "record_round", Round(
            "learner", self.cfg.step.strategy, self.round_started, now - self.round_started,
            scans=self.learner.scans_learned - self.scans_at_round, steps=self.learner.steps - self.steps_at_round,
            compared_with=decision.compared_with, outcome="promoted" if decision.promoted else "refused",
            version=version, reason=decision.reason, offsets=offsets,
            scores={d: {"miou": s.miou, "dice": s.dice, "samples": s.samples} for d, s in decision.scores.items()}))
        self.round_started = now
        self.scans_at_round, self.steps_at_round = self.learner.scans_learned, self.learner.steps
        return decision

    def _record(self, decision: Decision) -> None:
        self.metrics.versions.labels("published" if decision.promoted else "refused").inc()
        for domain, score in decision.scores.items():
            self.metrics.validation_miou.labels(domain).set(score.miou)
            self.metrics.validation_dice.labels(domain).set(score.dice)
        self.metrics.live_version.set(self.publisher.live_version)

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


async def take_records(loop: LearnerLoop, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                       records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
    """Accept each record, dead-lettering the refused ones. If the dead-letter topic cannot be reached, the
    consumer goes back to that record, so it and the ones after it are read again later, never skipped."""
    for tp, messages in records.items():
        for message in messages:
            if (error := loop.accept(message)) is None:
                continue
            try:
                outcome = await kafka_io.send_dead_letter(producer, loop.cfg.dead_letter_topic, message, error)
            except KafkaError as exc:
                log.warning("cannot dead-letter %s@%d:%d yet (%s); will read it again", tp.topic, tp.partition,
                            message.offset, exc)
                consumer.seek(tp, message.offset)
                break
            loop.dead_lettered(message, error, outcome)


async def publish_and_commit(loop: LearnerLoop, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
    """Checkpoint, then judge a candidate and announce it if published, then commit the checkpointed offsets.

    The checkpoint comes first so that a published version's training state (the parent of the next
    version) is always on disk, whatever moment a crash picks.
    """
    started = time.monotonic()
    try:
        await _checkpoint_judge_commit(loop, consumer, producer)
    finally:
        loop.judging_s = time.monotonic() - started


async def _checkpoint_judge_commit(loop: LearnerLoop, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
    try:
        await loop.checkpoint()
    except OSError as exc:
        # Without a checkpoint nothing may be committed or published; training goes on in memory and the
        # next checkpoint (once there is space) covers everything.
        loop.metrics.checkpoint_failures.inc()
        loop.last_publish = time.monotonic()  # try again after --publish-every-s, not at every poll
        log.error("could not write the checkpoint (%s); committing and publishing nothing until one is written",
                  exc)
        return
    try:
        manifest = await loop.publish()
    except OSError as exc:
        loop.last_publish = time.monotonic()
        log.error("could not publish a version (%s); will try again after --publish-every-s", exc)
        manifest = None
    if manifest is not None:
        try:
            await announce(producer, loop.cfg.models_topic, manifest)
        except KafkaError as exc:  # the version is in the store; servers find it at their next poll
            log.warning("could not announce version %d (%s); servers will find it by polling the store",
                        manifest.version, exc)
    owned = consumer.assignment()
    offsets = {tp: o for tp, o in loop.checkpointed.items() if tp in owned and loop.committed.get(tp) != o}
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
        loop.committed.update(offsets)
    except (CommitFailedError, KafkaError) as exc:
        # The checkpoint already holds these scans; a restart seeks past them (SeekToCheckpoint).
        log.warning("offset commit failed (%s); will retry at the next checkpoint", exc)


async def run(cfg: LearnerConfig, stop: asyncio.Event | None = None) -> None:
    """Consume, learn and publish until `stop` is set; then finish the step, checkpoint, commit, close."""
    stop = stop or asyncio.Event()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    metrics = LearnerMetrics()
    Path(cfg.model_dir).mkdir(parents=True, exist_ok=True)
    loop = await asyncio.to_thread(LearnerLoop, cfg, metrics)
    http = start_probe_server(loop) if cfg.metrics_port >= 0 else None
    await ensure_topics(cfg.kafka, security=cfg.kafka_security)
    producer = kafka_io.open_producer(cfg)
    consumer = kafka_io.open_consumer(cfg, loop.positions, loop.checkpointed)
    await producer.start()
    # weld.models tells the learner about pins, rollbacks and consolidated versions at once; the store
    # is looked at again before every judgement anyway, so a missed announcement only delays adoption.
    announced = asyncio.Event()
    follower = asyncio.create_task(follow_announcements(cfg.kafka, cfg.models_topic, lambda _: announced.set(),
                                                        security=cfg.kafka_security),
                                   name="follow-models")
    try:
        await consumer.start()
        log.info("learning from %s on %s (strategy %s, device %s)", cfg.topic, cfg.kafka, cfg.step.strategy,
                 loop.device)
        # Records are read while a chunk of steps runs in a worker thread, so consuming never waits on
        # training; checkpoints and publishing happen between chunks, when the training state is still.
        training: asyncio.Task | None = None
        while not stop.is_set():
            loop.heartbeat()
            busy = training is not None or loop.learner.has_work()
            records = await consumer.getmany(timeout_ms=TRAINING_POLL_MS if busy else IDLE_POLL_MS)
            await take_records(loop, consumer, producer, records)
            if training is not None and training.done():
                loop.record_steps(training.result())
                training = None
            loop.metrics.lag.set(kafka_io.consumer_lag(consumer, loop.positions))
            if follower.done():
                follower.result()  # it only ends by failing: re-raise here
            if training is None:
                if announced.is_set():
                    announced.clear()
                    await asyncio.to_thread(loop.sync_with_store)
                if loop.publish_due():
                    await publish_and_commit(loop, consumer, producer)
                if loop.learner.has_work():
                    training = asyncio.create_task(
                        asyncio.to_thread(loop.learner.train_for, STEPS_PER_CHUNK, CHUNK_SECONDS))
        if training is not None:
            loop.record_steps(await training)
        await publish_and_commit(loop, consumer, producer)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        try:
            await consumer.stop()
        finally:
            await producer.stop()
            if http is not None:
                http.shutdown()
            if loop.registry is not None:
                loop.registry.close()
        log.info("learner stopped at step %d", loop.learner.steps)


def start_probe_server(loop: LearnerLoop):
    """/metrics and /healthz (live while the loop makes progress) on the configured metrics port."""
    cfg = loop.cfg
    return start_metrics_server(cfg.metrics_port, cfg.metrics_host, loop.metrics.registry, live=loop.is_live)
