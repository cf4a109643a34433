"""Pictures for people: a scan windowed to 8 bits for display, class maps as one-byte-a-pixel PNGs.

The display window is the scan's 0.5th..99.5th percentile, so a 16-bit B-scan whose echoes use a
tenth of its range is not a black picture; the labels people paint come back as class-index PNGs and
are checked here (format, size, class range) before anything reaches Kafka.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from weldstream.classes import DEFECT_CLASSES
from weldstream.codec import PNG_MAGIC
from weldstream.errors import InvalidInput

WINDOW_PERCENTILES = (0.5, 99.5)


def display_png(scan: np.ndarray) -> bytes:
    """H x W (or C x H x W: the first channel) of any depth -> 8-bit grey PNG, windowed for the eye."""
    plane = np.asarray(scan[0] if scan.ndim == 3 else scan, dtype=np.float32)
    sample = plane[:: max(1, plane.shape[0] // 512), :: max(1, plane.shape[1] // 512)]
    low, high = np.percentile(sample, WINDOW_PERCENTILES)
    if high <= low:
        high = low + 1.0
    grey = np.clip((plane - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    return png(grey)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def class_map(data: bytes, height: int, width: int, field: str = "body") -> np.ndarray:
    """A painted label: an 8-bit PNG of class indices of exactly the scan's size, else InvalidInput."""
    if not data.startswith(PNG_MAGIC):
        raise InvalidInput(field, "is not a PNG; send the class indices as an 8-bit PNG (image/png)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size != (width, height):  # before decoding: a huge PNG is refused unread
                raise InvalidInput(field, f"is {img.size[0]}x{img.size[1]} px; the scan is {width}x{height}")
            if img.mode not in ("L", "P"):
                raise InvalidInput(field, f"is a {img.mode} PNG; class indices are one byte a pixel (mode L)")
            img.load()
            mask = np.array(img, dtype=np.uint8)  # a palette PNG's indices are the classes
    except InvalidInput:
        raise
    except Exception as exc:  # any decoder failure is the caller's bad bytes
        raise InvalidInput(field, f"is not a decodable PNG ({exc})") from None
    top = int(mask.max()) if mask.size else 0
    if top >= len(DEFECT_CLASSES):
        raise InvalidInput(field, f"has class {top}; classes are 0..{len(DEFECT_CLASSES) - 1} "
                                  f"({', '.join(DEFECT_CLASSES)})")
    return mask
