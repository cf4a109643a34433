"""`weld.models`: announcing versions and operators' pins, and following them. Kafka trouble never stops
the follower's owner (a server or the learner), which falls back to polling the weight store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from weldstream.kafka_security import KafkaSecurity
from weldstream.v1 import stream_pb2
from weldstream.weight_store import Manifest

log = logging.getLogger(__name__)
MAX_RETRY_S = 30.0
MODEL_NAME = "weld-seg"
ACTIONS = ("publish", "pin", "unpin", "rollback")


def announcement(manifest: Manifest, action: str = "publish") -> stream_pb2.ModelAnnouncement:
    """The weld.models message for a version (the store stays the source of truth)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown announcement action {action!r}; choose one of {list(ACTIONS)}")
    published = Timestamp()
    published.FromSeconds(int(manifest.created_at))
    newest = Timestamp()
    newest.FromNanoseconds(int(manifest.newest_label_at * 1e9))
    message = stream_pb2.ModelAnnouncement(
        model_name=MODEL_NAME, version=manifest.version, parent_version=manifest.parent_version,
        sha256=manifest.sha256, published_at=published, strategy=manifest.strategy,
        location=f"versions/{manifest.version:08d}", newest_label_at=newest, action=action,
    )
    for domain, score in sorted(manifest.scores.items()):
        message.scores.add(domain=domain, miou=score["miou"], dice=score["dice"], samples=int(score["samples"]))
    for offset in manifest.offsets:
        message.offsets.add(topic=offset["topic"], partition=offset["partition"], offset=offset["offset"])
    return message


async def announce(producer: AIOKafkaProducer, topic: str, manifest: Manifest, action: str = "publish") -> None:
    """Tell every server (and the learner) that the store has a new version or a new pin."""
    await producer.send_and_wait(topic, announcement(manifest, action).SerializeToString(), key=MODEL_NAME.encode())


async def announce_once(bootstrap: str, topic: str, manifest: Manifest, action: str,
                        security: KafkaSecurity | None = None) -> None:
    """Announce with a producer of its own (the command line's pin, rollback and consolidation)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **(security or KafkaSecurity()).client_kwargs(),
                                acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await announce(producer, topic, manifest, action)
    finally:
        await producer.stop()


async def follow_announcements(bootstrap: str, topic: str,
                               notify: Callable[[stream_pb2.ModelAnnouncement], None],
                               security: KafkaSecurity | None = None) -> None:
    """Read new announcements (no consumer group: every replica hears every one) until cancelled.

    While Kafka is unreachable the owner keeps working and polling the weight store; reconnects back
    off up to MAX_RETRY_S and only the first failure in a row is logged as a warning.
    """
    retry_s = 1.0
    while True:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **(security or KafkaSecurity()).client_kwargs(),
                                    group_id=None, auto_offset_reset="latest", enable_auto_commit=False)
        try:
            await consumer.start()
            log.info("following model announcements on %s (%s)", topic, bootstrap)
            retry_s = 1.0
            async for record in consumer:
                try:
                    message = stream_pb2.ModelAnnouncement.FromString(record.value)
                except DecodeError:
                    log.warning("ignoring undecodable announcement at offset %d", record.offset)
                    continue
                log.info("announced: %s version %d (parent %d)", message.action or "publish", message.version,
                         message.parent_version)
                notify(message)
        except KafkaError as exc:
            level = logging.WARNING if retry_s == 1.0 else logging.DEBUG
            log.log(level, "cannot follow %s on %s (%s); polling the weight store meanwhile", topic, bootstrap, exc)
        finally:
            await consumer.stop()
        await asyncio.sleep(retry_s)
        retry_s = min(MAX_RETRY_S, retry_s * 2)
