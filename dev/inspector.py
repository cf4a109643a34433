"""The demo's simulated inspector: labels the scans the server sent for review first, random scans otherwise.

The rig remembers every scan it sent to the server (``SentScans``), so it knows each one's true mask;
the inspector reads ``weld.scans.review`` like a labelling tool and answers a review scan with that
true mask on ``weld.scans.labeled``, under the same scan id. When no review scan is waiting it labels a
random scan of the rig's current domain, as the plain rig stream does. Labels come at a fixed rate:
the inspectors' time is the budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from google.protobuf.message import DecodeError

from weldstream.dev.rig import Schedule, labeled_producer, labeled_scan, next_scan
from weldstream.pacing import keep_pace
from weldstream.simulator import ScanSample
from weldstream.topics import LABELED_SCANS, REVIEW
from weldstream.v1 import stream_pb2

log = logging.getLogger(__name__)


class SentScans:
    """The scans a rig sent for segmentation, by scan id (the newest ``limit``)."""

    def __init__(self, limit: int = 4096) -> None:
        self._scans: OrderedDict[str, ScanSample] = OrderedDict()
        self._limit = limit

    def add(self, sample: ScanSample) -> None:
        self._scans[sample.scan_id] = sample
        while len(self._scans) > self._limit:
            self._scans.popitem(last=False)

    def pop(self, scan_id: str) -> ScanSample | None:
        return self._scans.pop(scan_id, None)


async def follow_review(bootstrap: str, waiting: asyncio.Queue[stream_pb2.ReviewScan], stop: asyncio.Event) -> None:
    """Read weld.scans.review into ``waiting`` (the oldest review scans give way when it is full)."""
    consumer = AIOKafkaConsumer(REVIEW, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    try:
                        message = stream_pb2.ReviewScan.FromString(record.value)
                    except DecodeError:
                        continue
                    if waiting.full():
                        waiting.get_nowait()
                    waiting.put_nowait(message)
    finally:
        await consumer.stop()


async def inspect(bootstrap: str, schedule: Schedule, rate: float, size: tuple[int, int], sent: SentScans,
                  waiting: asyncio.Queue[stream_pb2.ReviewScan], stop: asyncio.Event,
                  on_label: Callable[[str, bool], None], rig_id: str = "sim-rig-1", seed: int = 0) -> int:
    """Label ``rate`` scans a second while the schedule (which moves the rig between domains) lasts;
    ``on_label(rig's domain now, from_review)`` is called for each. Returns how many were labeled."""
    producer = await labeled_producer(bootstrap)
    labeled, started, counters = 0, time.monotonic(), {}  # counters: random scans drawn per domain
    try:
        for domain in schedule.domains(seed):
            if stop.is_set():
                break
            sample, from_review = None, False
            while sample is None and not waiting.empty():
                sample = sent.pop(waiting.get_nowait().scan_id)  # None: not a scan this rig sent, or already gone
                from_review = sample is not None
            if sample is None:
                sample = await next_scan(domain, counters, seed, size)
            message = labeled_scan(sample, rig_id)
            await producer.send(LABELED_SCANS, message.SerializeToString(), key=message.scan_id.encode())
            labeled += 1
            on_label(domain, from_review)
            await keep_pace(started, labeled, rate)
        await producer.flush()
    finally:
        await producer.stop()
    return labeled
