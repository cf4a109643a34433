"""One documented maximum scan size, and every byte limit derived from it.

A scan is at most MAX_SCAN_SIDE × MAX_SCAN_SIDE pixels (one channel unless the model says otherwise).
On the wire its pixels cost at most:

- 4 bytes each in an image (float32 is the widest accepted dtype),
- 1 byte each in a mask (uint8 class ids), 4 more with the optional confidence map (float32).

So the gRPC receive limit holds the widest image, the gRPC send limit a mask with its confidence, a
Kafka labeled-scan record (and its dead letter, which carries the record unchanged) an image with its
mask; each adds FRAMING_BYTES for the protobuf fields around the pixels. The server, the learner, the
simulated rig and the README's topic settings all take their numbers from here.
"""

from __future__ import annotations

MAX_SCAN_SIDE = 4096
FRAMING_BYTES = 1 << 20
IMAGE_BYTES_PER_PIXEL = 4  # float32
MASK_BYTES_PER_PIXEL = 1  # uint8 class ids
CONFIDENCE_BYTES_PER_PIXEL = 4  # float32


def scan_pixels(max_side: int = MAX_SCAN_SIDE) -> int:
    return max_side * max_side


def request_bytes(max_side: int = MAX_SCAN_SIDE, channels: int = 1) -> int:
    """The largest inference request: one scan of the widest dtype."""
    return scan_pixels(max_side) * channels * IMAGE_BYTES_PER_PIXEL + FRAMING_BYTES


def response_bytes(max_side: int = MAX_SCAN_SIDE) -> int:
    """The largest inference response: mask and confidence of the largest scan."""
    return scan_pixels(max_side) * (MASK_BYTES_PER_PIXEL + CONFIDENCE_BYTES_PER_PIXEL) + FRAMING_BYTES


def record_bytes(max_side: int = MAX_SCAN_SIDE, channels: int = 1) -> int:
    """The largest labeled-scan Kafka record: image and mask of the largest scan (producer
    max_request_size, consumer fetch sizes and the topic's max.message.bytes)."""
    return scan_pixels(max_side) * (channels * IMAGE_BYTES_PER_PIXEL + MASK_BYTES_PER_PIXEL) + FRAMING_BYTES
