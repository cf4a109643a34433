"""A simulated rig and inspector: labeled scans produced to Kafka, drifting through domains on a schedule."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from google.protobuf.timestamp_pb2 import Timestamp

from weldstream.codec import array_to_tensor
from weldstream.kafka_security import KafkaSecurity
from weldstream.limits import record_bytes
from weldstream.pacing import keep_pace
from weldstream.simulator import ScanSample, domain_names, generate_scan
from weldstream.topics import LABELED_SCANS, ensure_topics
from weldstream.v1 import stream_pb2, tensor_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Which domain each scan comes from. `sequential`: blocks of `per_domain` scans in turn;
    `gradual`: the mix slides from one domain to the next over each block; or explicit `name:count,…`."""

    plan: tuple[tuple[str, int], ...]
    gradual: bool = False

    @classmethod
    def parse(cls, text: str, domains: list[str] | None = None, per_domain: int = 200) -> Schedule:
        domains = domains or domain_names()
        if text in ("sequential", "gradual"):
            return cls(tuple((d, per_domain) for d in domains), gradual=text == "gradual")
        plan = []
        for part in text.split(","):
            name, _, count = part.strip().partition(":")
            if name not in domain_names():
                raise ValueError(f"unknown domain {name!r} in schedule; choose from {domain_names()}")
            plan.append((name, int(count or per_domain)))
        return cls(tuple(plan))

    def __len__(self) -> int:
        return sum(count for _, count in self.plan)

    def domains(self, seed: int = 0) -> Iterator[str]:
        rng = random.Random(seed)
        for index, (domain, count) in enumerate(self.plan):
            following = self.plan[index + 1][0] if index + 1 < len(self.plan) else domain
            for i in range(count):
                # gradual: share of the next domain rises linearly through the second half of the block
                share = max(0.0, (i / count - 0.5) * 2) if self.gradual else 0.0
                yield following if rng.random() < share else domain


def labeled_scan(sample: ScanSample, rig_id: str) -> stream_pb2.LabeledScan:
    now = Timestamp()
    now.GetCurrentTime()
    return stream_pb2.LabeledScan(
        scan_id=sample.scan_id, rig_id=rig_id, domain=sample.domain, captured_at=now, labeled_at=now,
        image=tensor_pb2.Image(tensor=array_to_tensor(sample.image)), mask=array_to_tensor(sample.mask),
        labeled_by="simulated-inspector",
    )


async def labeled_producer(bootstrap: str, security: KafkaSecurity | None = None) -> AIOKafkaProducer:
    """A started producer for labeled scans (the topics created first); the caller stops it."""
    security = security or KafkaSecurity()
    await ensure_topics(bootstrap, security=security)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **security.client_kwargs(), acks="all",
                                enable_idempotence=False, linger_ms=5, max_request_size=record_bytes())
    await producer.start()
    return producer


async def next_scan(domain: str, counters: dict[str, int], seed: int, size: tuple[int, int]) -> ScanSample:
    """The domain's next simulated scan in this rig's sequence (``counters``: scans drawn per domain)."""
    index = counters[domain] = counters.get(domain, -1) + 1
    return await asyncio.to_thread(generate_scan, domain, seed * 1_000_003 + index, size)


async def produce_stream(bootstrap: str, schedule: Schedule, rate: float, size: tuple[int, int], seed: int = 0,
                         rig_id: str = "sim-rig-1", topic: str = LABELED_SCANS,
                         stop: asyncio.Event | None = None,
                         on_scan: Callable[[ScanSample], None] | None = None,
                         security: KafkaSecurity | None = None) -> int:
    """Produce the schedule's scans at `rate` per second (0: as fast as possible); returns how many."""
    producer = await labeled_producer(bootstrap, security)
    sent = 0
    started = time.monotonic()
    counters: dict[str, int] = {}
    try:
        for domain in schedule.domains(seed):
            if stop is not None and stop.is_set():
                break
            sample = await next_scan(domain, counters, seed, size)
            message = labeled_scan(sample, rig_id)
            await producer.send(topic, message.SerializeToString(), key=message.scan_id.encode())
            sent += 1
            if on_scan is not None:
                on_scan(sample)
            await keep_pace(started, sent, rate)
        await producer.flush()
    finally:
        await producer.stop()
    log.info("produced %d labeled scans to %s in %.1f s", sent, topic, time.monotonic() - started)
    return sent
