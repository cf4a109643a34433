"""Scans onto the model's device and results back, with one copy each way.

Raw uint8/uint16/float32 pixels are written once into a host buffer of their own dtype (pinned on
CUDA, so the copy is asynchronous) and cross to the device in that dtype: a uint16 scan moves half
the bytes of its float32 form, and the conversion to float happens on the device. Results come back
into pinned buffers with one synchronisation for the whole batch; on the CPU nothing is copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from weldstream.preprocess import as_channels
from weldstream.threads import one_thread

TORCH_DTYPES: dict[np.dtype, torch.dtype] = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.uint16): torch.uint16,
    np.dtype(np.float32): torch.float32,
}


def torch_dtype(array: np.ndarray) -> torch.dtype:
    """The torch dtype a scan crosses to the device in (byte order aside); float32 for anything else."""
    return TORCH_DTYPES.get(np.dtype(array.dtype).newbyteorder("="), torch.float32)


def stage(scans: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Scans of one shape and dtype -> (N, C, H, W) on ``device`` in their own dtype (uint16 arrives as int32).

    Each scan is copied once, straight from the request's bytes into the batch buffer (which also
    fixes byte order); the buffer goes to the device with one non-blocking copy.
    """
    first = as_channels(scans[0])
    buffer = torch.empty((len(scans), *first.shape), dtype=torch_dtype(first), pin_memory=device.type == "cuda")
    host = buffer.numpy()
    for row, scan in enumerate(scans):
        host[row] = as_channels(scan)
    if buffer.dtype == torch.uint16 and device.type != "cpu":
        # torch's uint16 has few device kernels: the same bits cross as int16 and are widened there
        return buffer.view(torch.int16).to(device, non_blocking=True).to(torch.int32).bitwise_and_(0xFFFF)
    return buffer.to(device, non_blocking=True)


def fetch(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Device tensors -> numpy arrays: views on the CPU; on CUDA pinned copies, synchronised once."""
    if all(t.device.type == "cpu" for t in tensors):
        return [t.numpy() for t in tensors]
    hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for host, tensor in zip(hosts, tensors, strict=True):
        host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [h.numpy() for h in hosts]


@contextmanager
def host_threads(device: torch.device) -> Iterator[None]:
    """Work around the forward on a CPU device runs on one thread (see ``weldstream.threads``)."""
    if device.type != "cpu":
        yield
        return
    with one_thread():
        yield
