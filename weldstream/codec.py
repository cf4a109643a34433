"""Scans and masks on the wire: protobuf tensors and PNG/TIFF files <-> numpy arrays.

Every decoder checks what it is given and raises InvalidInput naming the field, so the server and the
learner reject bad input with one vocabulary.
"""

from __future__ import annotations

import io
import math

import numpy as np
import tifffile
from PIL import Image as PILImage

from weldstream.errors import InvalidInput
from weldstream.v1 import tensor_pb2

DTYPES: dict[int, np.dtype] = {
    tensor_pb2.UINT8: np.dtype("<u1"),
    tensor_pb2.UINT16: np.dtype("<u2"),
    tensor_pb2.FLOAT32: np.dtype("<f4"),
}
DTYPE_ENUMS: dict[np.dtype, int] = {np.dtype(v.newbyteorder("=")): k for k, v in DTYPES.items()}
ENCODINGS = ("png", "tiff")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def tensor_to_array(tensor: tensor_pb2.Tensor, field: str) -> np.ndarray:
    """A raw tensor message -> a read-only numpy view of its bytes, shape and dtype checked."""
    if tensor.dtype not in DTYPES:
        raise InvalidInput(f"{field}.dtype", "must be UINT8, UINT16 or FLOAT32")
    dtype = DTYPES[tensor.dtype]
    shape = tuple(int(d) for d in tensor.shape)
    if not shape:
        raise InvalidInput(f"{field}.shape", "is empty; give H x W or C x H x W")
    if any(d <= 0 for d in shape):
        raise InvalidInput(f"{field}.shape", f"has a non-positive dimension: {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a product of huge dims must not wrap
    if len(tensor.data) != expected:
        raise InvalidInput(
            f"{field}.data",
            f"has {len(tensor.data)} bytes but shape {list(shape)} of {np.dtype(dtype).name} needs {expected}",
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def array_to_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """A numpy array (uint8, uint16 or float32) -> a raw tensor message (little-endian, row-major)."""
    return fill_tensor(tensor_pb2.Tensor(), array)


def fill_tensor(message: tensor_pb2.Tensor, array: np.ndarray) -> tensor_pb2.Tensor:
    """Write an array into a tensor message in place (e.g. a response's field): the pixels are copied
    once, straight into the message's bytes, whether or not the array is contiguous."""
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in DTYPE_ENUMS:
        raise ValueError(f"cannot send dtype {array.dtype}; use uint8, uint16 or float32")
    enum = DTYPE_ENUMS[native]
    wire = DTYPES[enum]
    message.dtype = enum
    message.shape[:] = list(array.shape)
    message.data = (array if array.dtype == wire else array.astype(wire)).tobytes()
    return message


def decode_file(data: bytes, fmt: str, field: str) -> np.ndarray:
    """PNG or TIFF bytes -> array with the file's own bit depth (8/16-bit, float TIFF)."""
    fmt = fmt.lower() or _sniff_format(data)
    if fmt not in ENCODINGS:
        raise InvalidInput(f"{field}.format", f"{fmt!r} is not supported; use one of {list(ENCODINGS)}")
    try:
        if fmt == "tiff":
            array = tifffile.imread(io.BytesIO(data))
        else:
            with PILImage.open(io.BytesIO(data)) as img:
                img.load()
                array = _pil_to_array(img)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the caller's bad bytes
        raise InvalidInput(f"{field}.data", f"is not a decodable {fmt.upper()} image ({exc})") from None
    if array.dtype not in (np.uint8, np.uint16, np.float32):
        array = array.astype(np.float32)
    return array


def decode_image(image: tensor_pb2.Image, field: str = "image") -> np.ndarray:
    """An Image message (raw tensor or encoded file) -> numpy array."""
    source = image.WhichOneof("source")
    if source == "tensor":
        return tensor_to_array(image.tensor, f"{field}.tensor")
    if source == "encoded":
        if not image.encoded.data:
            raise InvalidInput(f"{field}.encoded.data", "is empty")
        return decode_file(image.encoded.data, image.encoded.format, f"{field}.encoded")
    raise InvalidInput(field, "is missing; set image.tensor or image.encoded")


def encode_png(array: np.ndarray) -> bytes:
    """uint8 or uint16 H x W array -> PNG bytes (16-bit PNG keeps full B-scan depth)."""
    if array.dtype not in (np.uint8, np.uint16) or array.ndim != 2:
        raise ValueError("PNG holds H x W uint8 or uint16; use TIFF for float scans")
    buffer = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(array))
    return buffer.getvalue()


def check_scan(array: np.ndarray, field: str, max_side: int) -> np.ndarray:
    """The checks every scan passes before a model sees it: rank, size limit, finite values."""
    if array.ndim not in (2, 3):
        raise InvalidInput(f"{field}.shape", f"must be H x W or C x H x W, got {list(array.shape)}")
    height, width = array.shape[-2:]
    if height > max_side or width > max_side:
        raise InvalidInput(f"{field}.shape", f"{height} x {width} exceeds the limit {max_side} x {max_side}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{field}.data", "contains NaN or Inf")
    return array


def decode_scan(image: tensor_pb2.Image, field: str, max_side: int, channels: int) -> np.ndarray:
    """A scan a model can take: decoded, checked (size, finite values) and with the model's channel count."""
    scan = check_scan(decode_image(image, field), field, max_side)
    got = 1 if scan.ndim == 2 else scan.shape[0]
    if got != channels:
        raise InvalidInput(f"{field}.shape", f"has {got} channels; the model takes {channels}")
    return scan


def _sniff_format(data: bytes) -> str:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data[:4] in TIFF_MAGICS:
        return "tiff"
    return "unknown"


def _pil_to_array(img: PILImage.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode == "I":
        return np.asarray(img).astype(np.uint16) if np.asarray(img).max() < 65536 else np.asarray(img, np.float32)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    if img.mode not in ("L", "1"):
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)
