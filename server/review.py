"""`weld.scans.review`: served scans worth an inspector's time, published without ever holding up a request.

A scan is a candidate when its doubt reaches ``--review-doubt`` or its rig is drifting. Candidates go
through, in order: deduplication by scan id, sampling (``--review-sample``), a token bucket
(``--review-rate`` a second, ``--review-burst`` at once), deduplication by content (sha256 of the
pixels, so a rig resending a scan under a new id is not shown twice), then a bounded queue. One
producer task owns the Kafka producer and sends from that queue; when Kafka is slow or away the queue
fills and further candidates are dropped and counted (``inference_review_scans_total{result}``). Only
scans that passed request validation and inference reach this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from weldstream.codec import array_to_tensor
from weldstream.kafka_security import KafkaSecurity
from weldstream.limits import record_bytes, scan_pixels
from weldstream.server.inference import Prediction
from weldstream.server.metrics import ServerMetrics
from weldstream.v1 import segmenter_pb2, stream_pb2, tensor_pb2

log = logging.getLogger(__name__)
REMEMBERED = 10_000  # scan ids and content hashes kept for deduplication
MAX_RETRY_S = 30.0


@dataclass(frozen=True)
class ReviewPolicy:
    rate: float = 1.0  # tokens a second
    burst: int = 10
    sample: float = 1.0
    queue: int = 64  # scans waiting for the producer ...
    queue_pixels: int = 4 * scan_pixels()  # ... and at most this many pixels of them (memory follows pixels)


class TokenBucket:
    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._tokens, self._last = float(burst), clock()

    def ready(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens >= 1.0

    def take(self) -> None:
        self._tokens -= 1.0


class Remembered:
    """A bounded set: the oldest keys are forgotten first."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)


def content_hash(scan: np.ndarray) -> str:
    digest = hashlib.sha256(f"{scan.dtype.str}{scan.shape}".encode())
    digest.update(np.ascontiguousarray(scan).data)
    return digest.hexdigest()


def review_message(scan_id: str, rig_id: str, scan: np.ndarray, prediction: Prediction, drift: float,
                   reasons: tuple[str, ...], content_sha256: str, served_at: float) -> stream_pb2.ReviewScan:
    captured = Timestamp()
    captured.FromNanoseconds(int(served_at * 1e9))
    message = stream_pb2.ReviewScan(
        scan_id=scan_id, rig_id=rig_id, captured_at=captured,
        image=tensor_pb2.Image(tensor=array_to_tensor(scan)), mask=array_to_tensor(prediction.mask),
        model_version=prediction.version, doubt=prediction.doubt, drift=drift, reasons=list(reasons),
        content_sha256=content_sha256,
    )
    for region in prediction.regions:
        message.regions.add(
            class_id=region.class_id, class_name=prediction.classes[region.class_id],
            bbox=segmenter_pb2.BoundingBox(x=region.x, y=region.y, width=region.width, height=region.height),
            area_px=region.area_px, mean_confidence=region.mean_confidence, doubt=region.doubt)
    return message


class ReviewPublisher:
    """Owns the review queue and the producer task; ``offer`` is synchronous and never waits."""

    def __init__(self, kafka: str, topic: str, policy: ReviewPolicy, metrics: ServerMetrics,
                 security: KafkaSecurity | None = None, seed: int | None = None) -> None:
        self._kafka, self._topic, self._policy = kafka, topic, policy
        self._metrics = metrics
        self._security = security or KafkaSecurity()
        self._bucket = TokenBucket(policy.rate, policy.burst)
        self._ids, self._hashes = Remembered(), Remembered()
        self._random = random.Random(seed)
        self._queue: asyncio.Queue[tuple] = asyncio.Queue(policy.queue)  # review_message's arguments
        self._queued_pixels = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="review-producer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def offer(self, scan_id: str, rig_id: str, scan: np.ndarray, prediction: Prediction, drift: float,
              reasons: tuple[str, ...]) -> str:
        """Consider one candidate; returns what became of it (the metric's result label)."""
        result = self._admit(scan_id, scan, prediction, drift, rig_id, reasons)
        if result != "queued":  # "sent" is counted once Kafka has it
            self._metrics.review_scans.labels(result).inc()
        return result

    def _admit(self, scan_id: str, scan: np.ndarray, prediction: Prediction, drift: float, rig_id: str,
               reasons: tuple[str, ...]) -> str:
        if scan_id and scan_id in self._ids:
            return "duplicate"
        if self._policy.sample < 1.0 and self._random.random() >= self._policy.sample:
            return "sampled_out"
        if not self._bucket.ready():
            return "rate_limited"
        digest = content_hash(scan)
        if digest in self._hashes:
            return "duplicate"
        if self._queue.full() or self._queued_pixels + scan.size > self._policy.queue_pixels:
            return "queue_full"
        self._bucket.take()
        if scan_id:
            self._ids.add(scan_id)
        scan_id = scan_id or f"sha256-{digest[:32]}"  # a labelling tool answers under the scan's id: give it one
        self._hashes.add(digest)
        self._queued_pixels += scan.size
        self._queue.put_nowait((scan_id, rig_id, scan, prediction, drift, reasons, digest, time.time()))
        return "queued"

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        from weldstream.topics import ensure_topics

        producer: AIOKafkaProducer | None = None
        retry_s = 1.0
        try:
            while True:
                item = await self._queue.get()
                self._queued_pixels -= item[2].size
                try:
                    if producer is None:
                        await ensure_topics(self._kafka, {self._topic: 1}, security=self._security)
                        producer = AIOKafkaProducer(bootstrap_servers=self._kafka, **self._security.client_kwargs(),
                                                    acks=1, enable_idempotence=False,
                                                    max_request_size=record_bytes())
                        await producer.start()
                        log.info("publishing scans for review to %s (%s)", self._topic, self._kafka)
                    message = await asyncio.to_thread(review_message, *item)
                    await producer.send_and_wait(self._topic, message.SerializeToString(),
                                                 key=message.scan_id.encode())
                    self._metrics.review_scans.labels("sent").inc()
                    retry_s = 1.0
                except Exception as exc:  # noqa: BLE001 - Kafka trouble never stops the publisher, nor serving
                    self._metrics.review_scans.labels("failed").inc()
                    log.warning("could not publish a scan for review (%r); retrying in %.0f s", exc, retry_s)
                    if producer is not None:
                        await asyncio.gather(producer.stop(), return_exceptions=True)
                        producer = None
                    await asyncio.sleep(retry_s)
                    retry_s = min(MAX_RETRY_S, retry_s * 2)
        finally:
            if producer is not None:
                await asyncio.gather(producer.stop(), return_exceptions=True)
