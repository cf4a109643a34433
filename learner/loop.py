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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import start_http_server

from weldstream.errors import InvalidInput
from weldstream.learner.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from weldstream.learner.config import LearnerConfig
from weldstream.learner.holdout import ValidationSets, is_held_out
from weldstream.learner.ledger import Entry, Ledger
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.publisher import Decision, Publisher
from weldstream.learner.records import decode_record
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import resolve_device
from weldstream.topics import ensure_topics
from weldstream.v1 import stream_pb2
from weldstream.weight_store import Manifest, WeightStore

log = logging.getLogger(__name__)
BATCHES_PER_POLL = 4


class SeekToCheckpoint(ConsumerRebalanceListener):
    """If the checkpoint is ahead of the committed offsets (crash between the two), start from it."""

    def __init__(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> None:
        self._consumer = consumer
        self._positions = positions

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            saved = self._positions.get(tp)
            if saved is None:
                continue
            committed = await self._consumer.committed(tp)
            if committed is None or committed < saved:
                self._consumer.seek(tp, saved)


class LearnerLoop:
    """The state the loop carries between messages; each method is one stage of the pipeline."""

    def __init__(self, cfg: LearnerConfig, metrics: LearnerMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.device = resolve_device(cfg.device)
        self.store = WeightStore(cfg.model_dir)
        self.learner = ContinualLearner(cfg, self.device)
        self.validation = ValidationSets(cfg.validation_per_domain)
        self.ledger = Ledger(cfg.model_dir)
        self.positions: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self.steps_at_publish = 0
        self.steps_at_checkpoint = 0
        self.last_publish = time.monotonic()
        self.dirty = False  # consumed something not yet in a checkpoint
        self._restore()
        self.publisher = Publisher(cfg, self.store, self.device)

    def _restore(self) -> None:
        state = load_checkpoint(checkpoint_path(self.cfg.model_dir), self.device)
        if state is None:
            return
        self.learner.load_state_dict(state["learner"])
        self.validation.load_state_dict(state["validation"])
        self.positions = {TopicPartition(t, p): o for (t, p), o in state["positions"].items()}
        self.steps_at_publish = self.steps_at_checkpoint = self.learner.steps
        log.info("resumed from checkpoint: step %d, %d pending scans, memory %s", self.learner.steps,
                 len(self.learner.pending), self.learner.memory.per_domain())

    # -- stage 1: one Kafka message -> training sample, validation sample or dead letter
    async def handle(self, message: ConsumerRecord, producer: AIOKafkaProducer) -> None:
        cfg = self.cfg
        try:
            sample = decode_record(message.value, cfg.train_size, len(cfg.model.classes), cfg.model.in_channels,
                                   cfg.max_side)
        except InvalidInput as exc:
            await self.dead_letter(message, exc, producer)
        else:
            use = "holdout" if is_held_out(sample.scan_id, cfg.holdout_share) else "train"
            if use == "holdout":
                self.validation.add(sample.scan_id, sample.domain, sample.x, sample.y)
            else:
                self.learner.add(sample)
            self.metrics.consumed.labels(use).inc()
            self.ledger.record(Entry(sample.scan_id, sample.domain, use, message.partition, message.offset))
        self.positions[TopicPartition(message.topic, message.partition)] = message.offset + 1
        self.dirty = True

    async def dead_letter(self, message: ConsumerRecord, exc: InvalidInput, producer: AIOKafkaProducer) -> None:
        headers = [("reason", str(exc).encode()), ("field", exc.field.encode()),
                   ("source.topic", message.topic.encode()), ("source.partition", str(message.partition).encode()),
                   ("source.offset", str(message.offset).encode())]
        await producer.send_and_wait(self.cfg.dead_letter_topic, message.value or b"", key=message.key,
                                     headers=headers)
        self.metrics.consumed.labels("dead_letter").inc()
        self.metrics.dead_lettered.labels(exc.field.split(".")[0]).inc()
        scan_id = message.key.decode(errors="replace") if message.key else f"offset-{message.offset}"
        self.ledger.record(Entry(scan_id, "", "dead_letter", message.partition, message.offset))
        log.warning("dead-lettered %s@%d:%d: %s", message.topic, message.partition, message.offset, exc)

    # -- stage 2: train every complete batch (a few per poll, so the consumer keeps polling)
    async def train_ready(self) -> int:
        trained = 0
        while trained < BATCHES_PER_POLL and (batch := self.learner.next_batch()) is not None:
            steps = await asyncio.to_thread(self.learner.train, batch)
            trained += 1
            m = self.metrics
            for stats in steps:
                m.steps.inc()
                m.projections.inc(int(stats.projected))
                m.loss.set(stats.loss)
                for phase, seconds in (("forward_backward", stats.forward_backward_s), ("memory", stats.memory_s),
                                       ("projection", stats.projection_s), ("total", stats.total_s)):
                    m.step_seconds.labels(phase).observe(seconds)
            for domain, fill in self.learner.memory.per_domain().items():
                m.memory_fill.labels(domain).set(fill)
                m.current_domain.labels(domain).set(1 if domain == batch.domain else 0)
        self.metrics.pending.set(len(self.learner.pending))
        return trained

    def publish_due(self) -> bool:
        steps = self.learner.steps - self.steps_at_publish
        elapsed = time.monotonic() - self.last_publish
        return steps >= self.cfg.publish_every_steps or (elapsed >= self.cfg.publish_every_s and
                                                          (steps > 0 or self.dirty))

    # -- stage 3: validate, publish or refuse, checkpoint, then commit
    async def publish_and_commit(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        if self.learner.steps > self.steps_at_publish and self.validation.domains():
            offsets = [{"topic": tp.topic, "partition": tp.partition, "offset": o}
                       for tp, o in sorted(self.positions.items())]
            decision = await asyncio.to_thread(self.publisher.consider, self.learner, self.validation, offsets)
            self._record(decision)
            if decision.manifest is not None:
                await announce(producer, self.cfg, decision.manifest)
            self.steps_at_publish = self.learner.steps
        await self.checkpoint_and_commit(consumer)
        self.last_publish = time.monotonic()

    def _record(self, decision: Decision) -> None:
        self.metrics.versions.labels("published" if decision.promoted else "refused").inc()
        for domain, score in decision.scores.items():
            self.metrics.validation_miou.labels(domain).set(score.miou)
            self.metrics.validation_dice.labels(domain).set(score.dice)
        self.metrics.live_version.set(self.publisher.live_version)

    async def checkpoint_and_commit(self, consumer: AIOKafkaConsumer | None) -> None:
        if not self.dirty and self.learner.steps == self.steps_at_checkpoint:
            return
        state = {"learner": self.learner.state_dict(), "validation": self.validation.state_dict(),
                 "positions": {(tp.topic, tp.partition): o for tp, o in self.positions.items()}}
        await asyncio.to_thread(self.ledger.flush)
        await asyncio.to_thread(save_checkpoint, checkpoint_path(self.cfg.model_dir), state)
        self.dirty = False
        self.steps_at_checkpoint = self.learner.steps
        if consumer is None or not self.positions:
            return
        try:
            await consumer.commit(dict(self.positions))
        except (CommitFailedError, KafkaError) as exc:
            # The checkpoint already holds these scans; a restart seeks past them (SeekToCheckpoint).
            log.warning("offset commit failed (%s); will retry at the next checkpoint", exc)

    async def update_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - self.positions.get(tp, 0))
        self.metrics.lag.set(lag)


async def announce(producer: AIOKafkaProducer, cfg: LearnerConfig, manifest: Manifest) -> None:
    """Tell every server a new version is in the store (the store stays the source of truth)."""
    published = Timestamp()
    published.FromSeconds(int(manifest.created_at))
    newest = Timestamp()
    newest.FromNanoseconds(int(manifest.newest_label_at * 1e9))
    message = stream_pb2.ModelAnnouncement(
        model_name="weld-seg", version=manifest.version, parent_version=manifest.parent_version,
        sha256=manifest.sha256, published_at=published, strategy=manifest.strategy,
        location=f"versions/{manifest.version:08d}", newest_label_at=newest,
    )
    for domain, score in sorted(manifest.scores.items()):
        message.scores.add(domain=domain, miou=score["miou"], dice=score["dice"], samples=int(score["samples"]))
    for offset in manifest.offsets:
        message.offsets.add(topic=offset["topic"], partition=offset["partition"], offset=offset["offset"])
    await producer.send_and_wait(cfg.models_topic, message.SerializeToString(), key=b"weld-seg")


async def run(cfg: LearnerConfig, stop: asyncio.Event | None = None) -> None:
    """Consume, learn and publish until `stop` is set; then finish the step, checkpoint, commit, close."""
    stop = stop or asyncio.Event()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    metrics = LearnerMetrics()
    http = None
    if cfg.metrics_port >= 0:
        http, _ = start_http_server(cfg.metrics_port, addr=cfg.metrics_host, registry=metrics.registry)
    Path(cfg.model_dir).mkdir(parents=True, exist_ok=True)
    loop = await asyncio.to_thread(LearnerLoop, cfg, metrics)
    await ensure_topics(cfg.kafka)
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka, acks="all", enable_idempotence=False)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.kafka, group_id=cfg.group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 4), max_poll_records=cfg.batch_size * 4,
    )
    consumer.subscribe([cfg.topic], listener=SeekToCheckpoint(consumer, loop.positions))
    await producer.start()
    try:
        await consumer.start()
        log.info("learning from %s on %s (strategy %s, device %s)", cfg.topic, cfg.kafka, cfg.step.strategy,
                 loop.device)
        while not stop.is_set():
            records = await consumer.getmany(timeout_ms=200)
            for messages in records.values():
                for message in messages:
                    await loop.handle(message, producer)
            await loop.train_ready()
            await loop.update_lag(consumer)
            if loop.publish_due():
                await loop.publish_and_commit(consumer, producer)
        await loop.publish_and_commit(consumer, producer)
    finally:
        try:
            await consumer.stop()
        finally:
            await producer.stop()
            if http is not None:
                http.shutdown()
        log.info("learner stopped at step %d", loop.learner.steps)
