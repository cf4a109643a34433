"""Follow `weld.models`: each announcement wakes the swapper. Kafka trouble never stops serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from weldstream.kafka_security import KafkaSecurity
from weldstream.v1 import stream_pb2

log = logging.getLogger(__name__)
MAX_RETRY_S = 30.0


async def follow_announcements(bootstrap: str, topic: str, notify: Callable[[int], None],
                               security: KafkaSecurity | None = None) -> None:
    """Read new announcements (no consumer group: every replica hears every one) until cancelled.

    While Kafka is unreachable the server keeps serving and polling the weight store; reconnects back
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
                    announcement = stream_pb2.ModelAnnouncement.FromString(record.value)
                except DecodeError:
                    log.warning("ignoring undecodable announcement at offset %d", record.offset)
                    continue
                log.info("announced: version %d (parent %d)", announcement.version, announcement.parent_version)
                notify(announcement.version)
        except KafkaError as exc:
            level = logging.WARNING if retry_s == 1.0 else logging.DEBUG
            log.log(level, "cannot follow %s on %s (%s); polling the weight store meanwhile", topic, bootstrap, exc)
        finally:
            await consumer.stop()
        await asyncio.sleep(retry_s)
        retry_s = min(MAX_RETRY_S, retry_s * 2)
