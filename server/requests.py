"""Turn wire requests into checked numpy scans; every failure names the offending field."""

from __future__ import annotations

import math
import time

import grpc
import numpy as np

from weldstream.codec import check_scan, decode_scan
from weldstream.errors import InvalidInput
from weldstream.kserve import grpc_predict_v2_pb2 as kserve
from weldstream.v1 import segmenter_pb2

KSERVE_DTYPES: dict[str, np.dtype] = {
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "FP32": np.dtype("<f4"),
}
INPUT_NAME = "scan"
RIG_METADATA = "x-rig-id"
MAX_RIG_ID = 128


def metadata_rig(context: grpc.aio.ServicerContext) -> str:
    """The call's `x-rig-id` metadata, or ''."""
    rig = next((value for key, value in context.invocation_metadata() or () if key == RIG_METADATA), "")
    return rig.decode(errors="replace") if isinstance(rig, bytes) else rig


def checked_rig(rig: str) -> str:
    if len(rig) > MAX_RIG_ID:
        raise InvalidInput("rig_id", f"is {len(rig)} characters long; at most {MAX_RIG_ID}")
    return rig


def rig_of(named: str, context: grpc.aio.ServicerContext) -> str:
    """The rig a request names (its field or parameter), else its `x-rig-id` metadata, else ''."""
    return checked_rig(named or metadata_rig(context))


def infer_rig(request: kserve.ModelInferRequest) -> str:
    """A KServe request names its rig with the string parameter `rig_id`."""
    return request.parameters["rig_id"].string_param if "rig_id" in request.parameters else ""


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the time.monotonic() clock, or None when the client set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def scan_from_request(request: segmenter_pb2.SegmentRequest, max_side: int, channels: int) -> np.ndarray:
    if not request.HasField("image"):
        raise InvalidInput("image", "is missing; set image.tensor or image.encoded")
    return decode_scan(request.image, "image", max_side, channels)


def scans_from_infer(request: kserve.ModelInferRequest, model_name: str, max_side: int) -> list[np.ndarray]:
    """A KServe v2 ModelInferRequest -> one scan per batch row; shape [N,1,H,W], [N,H,W] or [1,H,W]."""
    if request.model_name != model_name:
        raise InvalidInput("model_name", f"unknown model {request.model_name!r}; this server serves {model_name!r}")
    if len(request.inputs) != 1:
        raise InvalidInput("inputs", f"expected exactly one input named {INPUT_NAME!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    field = f"inputs[{INPUT_NAME}]"
    if tensor.name != INPUT_NAME:
        raise InvalidInput("inputs[0].name", f"is {tensor.name!r}; the input is called {INPUT_NAME!r}")
    if tensor.datatype not in KSERVE_DTYPES:
        raise InvalidInput(f"{field}.datatype", f"{tensor.datatype!r} is not one of {sorted(KSERVE_DTYPES)}")
    dtype = KSERVE_DTYPES[tensor.datatype]
    shape = [int(d) for d in tensor.shape]
    if len(shape) not in (3, 4) or any(d <= 0 for d in shape):
        raise InvalidInput(f"{field}.shape", f"must be [N,1,H,W], [N,H,W] or [1,H,W] with positive dims, got {shape}")
    if len(shape) == 4 and shape[1] != 1:
        raise InvalidInput(f"{field}.shape", f"channel dimension must be 1, got {shape[1]}")
    pixels = shape[0] * shape[-2] * shape[-1]
    if pixels > max_side * max_side:
        # the answer (mask + confidence of every scan) must fit the send limit, which holds one largest scan
        raise InvalidInput(f"{field}.shape", f"{shape} holds {pixels} pixels; one request carries at most "
                                             f"{max_side * max_side} (one {max_side} x {max_side} scan)")
    count = math.prod(shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput("raw_input_contents", "must hold exactly one entry, for the input 'scan'")
        raw = request.raw_input_contents[0]
        if len(raw) != count * dtype.itemsize:
            raise InvalidInput("raw_input_contents[0]",
                               f"has {len(raw)} bytes but {tensor.datatype} {shape} needs {count * dtype.itemsize}")
        array = np.frombuffer(raw, dtype=dtype)
    else:
        typed = tensor.contents.fp32_contents if tensor.datatype == "FP32" else tensor.contents.uint_contents
        if len(typed) != count:
            raise InvalidInput(f"{field}.contents", f"has {len(typed)} values but shape {shape} needs {count}")
        values = np.asarray(typed)
        if dtype.kind == "u" and values.size and values.max() > np.iinfo(dtype).max:
            raise InvalidInput(f"{field}.contents", f"values exceed the {tensor.datatype} range")
        array = values.astype(dtype)
    array = array.reshape(shape[0], shape[-2], shape[-1])
    return [check_scan(row, field, max_side) for row in array]
