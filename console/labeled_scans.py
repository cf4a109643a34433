"""How a label becomes a ``LabeledScan`` on the labeled topic, whoever painted it (the review station or
Label Studio): the served scan's own pixels and capture time, the painted class map, who and when, and the
version whose mask the painter started from; "sent" means the broker acknowledged the record."""

from __future__ import annotations

import asyncio

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from google.protobuf.timestamp_pb2 import Timestamp

from weldstream.codec import array_to_tensor, tensor_to_array
from weldstream.v1 import stream_pb2

SEND_TIMEOUT_S = 30.0


def labeled_scan(scan: stream_pb2.ReviewScan, mask: np.ndarray, domain: str, labeled_by: str,
                 prelabel_version: int | None = None) -> stream_pb2.LabeledScan:
    """The record for ``scan`` labeled with ``mask``; the pre-label's version defaults to the served one."""
    labeled_at = Timestamp()
    labeled_at.GetCurrentTime()
    message = stream_pb2.LabeledScan(
        scan_id=scan.scan_id, rig_id=scan.rig_id, domain=domain, image=scan.image, mask=array_to_tensor(mask),
        labeled_by=labeled_by, labeled_at=labeled_at,
        prelabel_version=scan.model_version if prelabel_version is None else prelabel_version)
    if scan.HasField("captured_at"):
        message.captured_at.CopyFrom(scan.captured_at)
    return message


def pixels_changed(scan: stream_pb2.ReviewScan, mask: np.ndarray) -> int:
    """How many pixels the label changed from the served mask (all of them when none was served)."""
    return int((mask != tensor_to_array(scan.mask, "mask")).sum()) if scan.HasField("mask") else int(mask.size)


async def send_labeled(producer: AIOKafkaProducer, topic: str, message: stream_pb2.LabeledScan,
                       timeout_s: float = SEND_TIMEOUT_S) -> RecordMetadata:
    """Produce keyed by scan id and wait for the broker's acknowledgement (raises on a timeout or refusal)."""
    return await asyncio.wait_for(producer.send_and_wait(topic, message.SerializeToString(),
                                                         key=message.scan_id.encode()), timeout_s)
