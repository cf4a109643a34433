"""The learner's Kafka I/O: consumer, producer, rebalance listener and dead letters.

Everything that talks to a broker lives here, so the learner's stages (``loop.LearnerLoop``) are plain
methods that can be tested without one.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from weldstream.errors import InvalidInput
from weldstream.learner.config import LearnerConfig

log = logging.getLogger(__name__)


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


def open_consumer(cfg: LearnerConfig, positions: dict[TopicPartition, int]) -> AIOKafkaConsumer:
    """A consumer of the labeled topic with auto-commit off: offsets are committed after checkpoints."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.kafka, group_id=cfg.group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 4), max_poll_records=cfg.batch_size * 4,
    )
    consumer.subscribe([cfg.topic], listener=SeekToCheckpoint(consumer, positions))
    return consumer


def open_producer(cfg: LearnerConfig) -> AIOKafkaProducer:
    """Dead letters and announcements; acks from every in-sync replica, no idempotence (not every broker has it)."""
    return AIOKafkaProducer(bootstrap_servers=cfg.kafka, acks="all", enable_idempotence=False)


def dead_letter_headers(message: ConsumerRecord, exc: InvalidInput) -> list[tuple[str, bytes]]:
    """Why a record was refused and where it came from, so it can be fixed and produced again."""
    return [("reason", str(exc).encode()), ("field", exc.field.encode()),
            ("source.topic", message.topic.encode()), ("source.partition", str(message.partition).encode()),
            ("source.offset", str(message.offset).encode())]


async def send_dead_letter(producer: AIOKafkaProducer, topic: str, message: ConsumerRecord,
                           exc: InvalidInput) -> None:
    await producer.send_and_wait(topic, message.value or b"", key=message.key,
                                 headers=dead_letter_headers(message, exc))
    log.warning("dead-lettered %s@%d:%d: %s", message.topic, message.partition, message.offset, exc)


def consumer_lag(consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> int:
    """Records on the assigned partitions that the learner has not read yet."""
    lag = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            lag += max(0, high - positions.get(tp, 0))
    return lag
