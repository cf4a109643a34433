"""The learner's Kafka I/O: consumer, producer, rebalance listener and dead letters.

Everything that talks to a broker lives here, so the learner's stages (``pipeline.LearnerLoop``) are plain
methods that can be tested without one.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from weldstream.errors import InvalidInput
from weldstream.learner.config import LearnerConfig
from weldstream.limits import record_bytes
from weldstream.topics import dead_letter_headers

log = logging.getLogger(__name__)


class SeekToCheckpoint(ConsumerRebalanceListener):
    """If the checkpoint is ahead of the committed offsets (crash between the two), start from it.

    On revocation the offsets already checkpointed for the revoked partitions are committed, and the
    partitions leave the positions the learner commits: another member owns them now, and a commit that
    names them fails as a whole. Scans read from them but not yet checkpointed are read again by their
    new owner (at-least-once, never lost).
    """

    def __init__(self, consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int],
                 checkpointed: dict[TopicPartition, int] | None = None) -> None:
        self._consumer = consumer
        self._positions = positions
        self._checkpointed = checkpointed if checkpointed is not None else {}

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        safe = {tp: self._checkpointed[tp] for tp in revoked if tp in self._checkpointed}
        if safe:
            try:
                await self._consumer.commit(safe)
            except KafkaError as exc:
                log.warning("could not commit revoked partitions %s (%s); their new owner re-reads them",
                            sorted(safe), exc)
        for tp in revoked:
            self._positions.pop(tp, None)
            self._checkpointed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            saved = self._positions.get(tp)
            committed = await self._consumer.committed(tp)
            start = saved if saved is not None and (committed is None or committed < saved) else committed
            if start is None:
                continue
            end = (await self._consumer.end_offsets([tp]))[tp]
            if end < start:
                # The log holds fewer records than were already read: the broker lost it (an in-memory
                # broker restarted). Its records are new ones, so read them all.
                log.warning("%s has %d records, fewer than the %d already read; the broker lost its log, reading "
                            "it from the start", tp, end, start)
                self._positions.pop(tp, None)
                self._checkpointed.pop(tp, None)
                await self._consumer.seek_to_beginning(tp)
            elif start != committed:
                self._consumer.seek(tp, start)


def largest_record(cfg: LearnerConfig) -> int:
    """Bytes of the largest labeled scan the learner accepts (see weldstream.limits)."""
    return record_bytes(cfg.max_side, cfg.model.in_channels)


def open_consumer(cfg: LearnerConfig, positions: dict[TopicPartition, int],
                  checkpointed: dict[TopicPartition, int] | None = None) -> AIOKafkaConsumer:
    """A consumer of the labeled topic with auto-commit off: offsets are committed after checkpoints."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.kafka, **cfg.kafka_security.client_kwargs(), group_id=cfg.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=max(100, cfg.session_timeout_ms // 4), max_poll_records=cfg.batch_size * 4,
        max_partition_fetch_bytes=largest_record(cfg), fetch_max_bytes=max(largest_record(cfg), 52428800),
    )
    consumer.subscribe([cfg.topic], listener=SeekToCheckpoint(consumer, positions, checkpointed))
    return consumer


def open_producer(cfg: LearnerConfig) -> AIOKafkaProducer:
    """Dead letters and announcements; acks from every in-sync replica, no idempotence (not every broker has it).

    A dead letter carries the refused record unchanged, so the producer takes a record of the largest scan.
    """
    return AIOKafkaProducer(bootstrap_servers=cfg.kafka, **cfg.kafka_security.client_kwargs(), acks="all",
                            enable_idempotence=False, max_request_size=largest_record(cfg))


async def send_dead_letter(producer: AIOKafkaProducer, topic: str, message: ConsumerRecord,
                           exc: InvalidInput) -> str:
    """Send a refused record to the dead-letter topic; returns "dead_letter" or "skipped".

    A record too large for the producer or the broker goes without its value (the headers say how big
    it was and where it still lies); if even that is refused, it is skipped with the reason logged, so
    one record never stops the learner.
    """
    where = f"{message.topic}@{message.partition}:{message.offset}"
    headers = dead_letter_headers(message, exc)
    try:
        await producer.send_and_wait(topic, message.value or b"", key=message.key, headers=headers)
        log.warning("dead-lettered %s: %s", where, exc)
        return "dead_letter"
    except MessageSizeTooLargeError as too_large:
        dropped = f"{len(message.value or b'')} bytes; too large for the dead-letter topic ({too_large})"
        headers.append(("value.dropped", dropped.encode()))
    try:
        await producer.send_and_wait(topic, b"", key=message.key, headers=headers)
        log.warning("dead-lettered %s without its value (%s): %s", where, dropped, exc)
        return "dead_letter"
    except MessageSizeTooLargeError as still:
        log.error("skipped %s: it cannot be dead-lettered even without its value (%s); it was refused because %s",
                  where, still, exc)
        return "skipped"


def consumer_lag(consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int]) -> int:
    """Records on the assigned partitions that the learner has not read yet."""
    lag = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            lag += max(0, high - positions.get(tp, 0))
    return lag
