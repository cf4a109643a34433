"""The learner process: Kafka in, GEM steps, versions out. `run(cfg)` owns the consumer and producer.

It feeds records to the stages (``pipeline.LearnerLoop``), runs training chunks in a worker thread and,
between chunks, hands over to ``judging`` (checkpoint, judge, announce, commit); on stop it finishes the
step, judges and commits once more, and closes everything it opened, in order.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from weldstream.announcements import follow_announcements
from weldstream.backoff import Backoff
from weldstream.learner import kafka_io
from weldstream.learner.config import LearnerConfig
from weldstream.learner.judging import follow_store, publish_and_commit
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.pipeline import LearnerLoop
from weldstream.metrics_http import start_metrics_server
from weldstream.s3_client import StoreUnavailable
from weldstream.topics import ensure_topics

log = logging.getLogger(__name__)

# One chunk of training between looks at the stream: short enough that publishing and checkpoints
# are never far off, long enough that the thread hand-off costs nothing.
STEPS_PER_CHUNK = 16
CHUNK_SECONDS = 1.0
TRAINING_POLL_MS = 50
IDLE_POLL_MS = 200


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


async def _open(cfg: LearnerConfig, metrics: LearnerMetrics, stop: asyncio.Event) -> LearnerLoop | None:
    """The learner's state, once its store answers: a learner started while the bucket is unreachable waits
    (backing off 1-30 s, counted in learner_store_errors_total) instead of exiting; None if stopped first."""
    backoff = Backoff()
    while True:
        try:
            return await asyncio.to_thread(LearnerLoop, cfg, metrics)
        except StoreUnavailable as exc:
            metrics.store_errors.inc()
            wait = backoff.failed()
            log.warning("the store is unreachable (%s); trying again in %.0f s", exc, wait)
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return None
            except TimeoutError:
                pass


async def run(cfg: LearnerConfig, stop: asyncio.Event | None = None) -> None:
    """Consume, learn and publish until `stop` is set; then finish the step, checkpoint, commit, close."""
    stop = stop or asyncio.Event()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    metrics = LearnerMetrics()
    Path(cfg.model_dir).mkdir(parents=True, exist_ok=True)
    loop = await _open(cfg, metrics, stop)
    if loop is None:
        return
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
                    await follow_store(loop)
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
