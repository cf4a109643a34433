"""decode_record(): the only Kafka decoder. A labeled scan either becomes a training sample or an error
naming the field, which the loop sends to the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from google.protobuf.message import DecodeError

from weldstream.codec import decode_scan, tensor_to_array
from weldstream.errors import InvalidInput
from weldstream.preprocess import training_pair
from weldstream.v1 import stream_pb2


@dataclass(frozen=True)
class LabeledSample:
    scan_id: str
    domain: str
    x: torch.Tensor  # (C, H, W) float32, normalised as the server normalises, at native size
    y: torch.Tensor  # (H, W) uint8 class map
    labeled_at: float  # unix seconds, 0 if the producer did not say


def decode_record(value: bytes | None, num_classes: int, in_channels: int, max_side: int) -> LabeledSample:
    if not value:
        raise InvalidInput("message", "is empty")
    message = stream_pb2.LabeledScan()
    try:
        message.ParseFromString(value)
    except DecodeError as exc:
        raise InvalidInput("message", f"is not a weldstream.v1.LabeledScan ({exc})") from None
    if not message.scan_id:
        raise InvalidInput("scan_id", "is empty")
    if not message.domain:
        raise InvalidInput("domain", "is empty; every labeled scan needs its site/rig/condition tag")
    if not message.HasField("image"):
        raise InvalidInput("image", "is missing")
    if not message.HasField("mask"):
        raise InvalidInput("mask", "is missing")
    image = decode_scan(message.image, "image", max_side, in_channels)
    mask = tensor_to_array(message.mask, "mask")
    if mask.dtype != np.uint8:
        raise InvalidInput("mask.dtype", "must be UINT8")
    if mask.shape != image.shape[-2:]:
        raise InvalidInput("mask.shape", f"{list(mask.shape)} does not match the image's {list(image.shape[-2:])}")
    if int(mask.max()) >= num_classes:
        raise InvalidInput("mask.data", f"has class id {int(mask.max())}; the model knows {num_classes} classes")
    x, y = training_pair(image, mask)
    labeled_at = message.labeled_at.ToDatetime().timestamp() if message.HasField("labeled_at") else 0.0
    return LabeledSample(message.scan_id, message.domain, x, y, labeled_at)
