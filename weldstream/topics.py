"""Kafka topic names and their creation; both the learner and the server use these."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

from weldstream.errors import InvalidInput
from weldstream.kafka_security import KafkaSecurity

log = logging.getLogger(__name__)

# The Kafka bootstrap address every command uses unless told otherwise (the embedded broker's).
DEFAULT_KAFKA = "127.0.0.1:9092"
LABELED_SCANS = "weld.scans.labeled"
DEAD_LETTER = "weld.scans.deadletter"
MODELS = "weld.models"
# Served scans worth an inspector's time (doubtful, or from a drifting rig), published by the servers.
REVIEW = "weld.scans.review"

# Labeled scans are partitioned by scan id for producer throughput; the learner reads all partitions.
DEFAULT_PARTITIONS = {LABELED_SCANS: 3, DEAD_LETTER: 1, MODELS: 1, REVIEW: 1}


def dead_letter_headers(message: ConsumerRecord, exc: InvalidInput) -> list[tuple[str, bytes]]:
    """Why a record was refused and where it came from, so it can be fixed and produced again."""
    return [("reason", str(exc).encode()), ("field", exc.field.encode()),
            ("source.topic", message.topic.encode()), ("source.partition", str(message.partition).encode()),
            ("source.offset", str(message.offset).encode())]


async def ensure_topics(bootstrap: str, partitions: dict[str, int] | None = None,
                        replication_factor: int = 1, security: KafkaSecurity | None = None) -> None:
    """Create each topic with an explicit partition count if it does not exist yet."""
    wanted = partitions or DEFAULT_PARTITIONS
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(security or KafkaSecurity()).client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, n, replication_factor) for name, n in wanted.items() if name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created by a peer in the meantime
            log.info("created topics %s", [t.name for t in missing])
    finally:
        await admin.close()
