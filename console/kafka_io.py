"""The console on Kafka: it hears `weld.scans.review` in its own consumer group, and sends what people
label to `weld.scans.labeled`, each record acknowledged by the broker before the person is told "sent".

Review records are stored before their offsets are committed, so a console stopped at any moment loses
none (a redelivered one is recognised by its scan id); a record that is not a ReviewScan goes to the
dead-letter topic with the reason, and the feed goes on.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from google.protobuf.message import DecodeError

from weldstream.console.config import ConsoleConfig
from weldstream.console.review_queue import ReviewQueue
from weldstream.errors import InvalidInput
from weldstream.limits import record_bytes
from weldstream.topics import DEAD_LETTER, dead_letter_headers
from weldstream.v1 import stream_pb2

log = logging.getLogger(__name__)
RETRY_S = 5.0


def open_producer(cfg: ConsoleConfig) -> AIOKafkaProducer:
    """Acks from every in-sync replica; no idempotence (not every broker has it)."""
    assert cfg.kafka
    return AIOKafkaProducer(bootstrap_servers=cfg.kafka, **cfg.kafka_security.client_kwargs(), acks="all",
                            enable_idempotence=False, max_request_size=record_bytes())


def review_scan(record: ConsumerRecord) -> stream_pb2.ReviewScan:
    """The record as a ReviewScan, or InvalidInput naming what is wrong."""
    scan = stream_pb2.ReviewScan()
    try:
        scan.ParseFromString(record.value or b"")
    except DecodeError as exc:
        raise InvalidInput("message", f"is not a weldstream.v1.ReviewScan ({exc})") from None
    if not scan.scan_id:
        raise InvalidInput("scan_id", "is empty")
    if not scan.HasField("image"):
        raise InvalidInput("image", "is missing")
    return scan


class ReviewFeed:
    """Fills the review queue from the review topic until stopped; reconnects after a broker outage."""

    def __init__(self, cfg: ConsoleConfig, queue: ReviewQueue, producer: AIOKafkaProducer) -> None:
        self.cfg = cfg
        self.queue = queue
        self.producer = producer
        self.received = 0
        self.dead_lettered = 0

    async def run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                self.cfg.review_topic, bootstrap_servers=self.cfg.kafka, **self.cfg.kafka_security.client_kwargs(),
                group_id=self.cfg.review_group, enable_auto_commit=False, auto_offset_reset="earliest",
                max_partition_fetch_bytes=record_bytes(), fetch_max_bytes=max(record_bytes(), 52428800))
            try:
                await consumer.start()
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker outage or a rebalance gone wrong: start over
                log.warning("review feed: %s; reconnecting in %.0f s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)
            finally:
                await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=50)
            for records in batches.values():
                for record in records:
                    await self._take(record)
            if batches:
                await consumer.commit()

    async def _take(self, record: ConsumerRecord) -> None:
        try:
            scan = review_scan(record)
            added = await asyncio.to_thread(self.queue.add, scan)
        except InvalidInput as exc:
            await self.producer.send_and_wait(DEAD_LETTER, record.value or b"", key=record.key,
                                              headers=dead_letter_headers(record, exc))
            self.dead_lettered += 1
            log.warning("review record %s@%d:%d dead-lettered: %s", record.topic, record.partition, record.offset, exc)
            return
        self.received += added
