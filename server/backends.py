"""How a served version runs its forward pass, and the check that a faster one still gives eager's masks.

Every backend is a ``Predictor`` (padded scans -> ``PixelMaps``, see ``weldstream.tiles``): classes,
confidence, the normalised entropy the server's doubt is made of and the pooled encoder features its
drift monitor reads, all from one ``ServingHead`` module, so doubt and drift mean the same whatever
the backend:

- ``auto`` (the default): on the CPU the fastest verified backend, measured once when the server starts
  (``fastest_backend``: ``torchscript``, ``onnxruntime`` and fp32 eager timed on the first version), and
  ``torch`` on CUDA;
- ``torch``: the eager module in channels_last layout; on CUDA under bf16 autocast (fp16 where the GPU
  has no bf16) and replayed from CUDA graphs captured per bucketed batch shape;
- ``torchscript`` (CPU): the serving head traced, frozen and optimised for inference (fp32, oneDNN);
- ``onnxruntime`` (CPU): the served weights exported to ONNX when the version is loaded, the head
  (argmax, confidence, entropy, pooled features) included in the graph.

A backend other than plain fp32 eager goes live only after its masks agree with fp32 eager on a few
simulated scans (``MIN_AGREEMENT`` of the pixels); otherwise the version is served by fp32 eager, the
reason is logged and ``inference_backend_fallbacks_total`` counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weldstream.model import ModelConfig
from weldstream.preprocess import pad_to_multiple, window_intensities
from weldstream.simulator import domain_names, generate_scan
from weldstream.tiles import PixelMaps, Predictor, ServingHead

log = logging.getLogger(__name__)
BUILT_BACKENDS = ("torch", "torchscript", "onnxruntime")
CPU_CANDIDATES = ("torchscript", "onnxruntime", "torch")  # what auto times on the CPU, in order of preference
BACKENDS = ("auto", *BUILT_BACKENDS)  # what --backend takes
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MIN_AGREEMENT = 0.999  # share of pixels whose class must match fp32 eager
CHECK_SIZES = ((128, 128), (96, 160), (128, 128))  # one scan per size; an odd size exercises dynamic axes
# Runs a build step on a thread of normal priority (see Swapper); by default on the calling thread.
RunNormal = Callable[[Callable[[], object]], object]


def on_this_thread(build: Callable[[], object]) -> object:
    return build()


@dataclass(frozen=True)
class Backend:
    name: str  # what /metrics and the logs call it: torch, torch-bf16, torch-bf16-graphs, onnxruntime
    predict: Predictor
    pads_batches: bool = False  # batches are padded to bucket sizes (shape-specialised kernels or graphs)
    torch_threads: bool = True  # its forward runs on torch's CPU threads (else torch work around it takes one)


class BackendRefused(Exception):
    """A faster backend could not be built or disagrees with fp32 eager; the version is served eagerly."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # a low-cardinality metric label: failed or disagrees


def bucket_size(count: int, largest: int) -> int:
    """The batch size a batch of ``count`` scans runs at: the next power of two, at most ``largest``
    (and never below ``count``), so a few shapes serve every batch."""
    if count < 1:
        raise ValueError("a batch holds at least one scan")
    bucket = 1 << (count - 1).bit_length()
    return max(count, min(bucket, largest))


def autocast_dtype(device: torch.device, precision: str,
                   bf16_supported: Callable[[], bool] = torch.cuda.is_bf16_supported) -> torch.dtype | None:
    """The dtype the forward runs in under autocast, or None for full fp32.

    ``auto`` means bf16 on CUDA (fp16 on GPUs without bf16) and fp32 on CPU, where autocast adds casts
    without faster kernels on most CPUs.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if bf16_supported() else torch.float16


def eager(module: nn.Module) -> Backend:
    """fp32 eager torch, channels_last: the reference every other backend is checked against."""
    return Backend("torch", _channels_last(ServingHead(module)))


def autocast(module: nn.Module, dtype: torch.dtype) -> Backend:
    """Eager torch under autocast (on the device of its input); the head (softmax, argmax, entropy) in fp32."""
    return Backend(f"torch-{str(dtype).removeprefix('torch.').replace('bfloat16', 'bf16').replace('float16', 'fp16')}",
                   _channels_last(ServingHead(module, autocast=dtype)))


def _channels_last(head: ServingHead) -> Predictor:
    def predict(padded: Tensor) -> PixelMaps:
        return PixelMaps(*head(padded.contiguous(memory_format=torch.channels_last)))
    return predict


def agreement(candidate: Predictor, reference: Predictor, images: list[Tensor], stride: int) -> float:
    """Share of pixels on which two predictors pick the same class, over normalised (N, C, H, W) images."""
    same = total = 0
    for image in images:
        padded = pad_to_multiple(image, stride)
        ours, theirs = candidate(padded)[0], reference(padded)[0]
        same += int((ours == theirs).sum())
        total += ours.numel()
    return same / max(total, 1)


def check_images(config: ModelConfig, device: torch.device) -> list[Tensor]:
    """A few simulated scans of different domains, normalised as the server normalises a request."""
    names = domain_names()
    images = []
    for seed, size in enumerate(CHECK_SIZES):
        scan = generate_scan(names[seed % len(names)], seed, size).image
        x = torch.as_tensor(scan).float().reshape(1, 1, *size).expand(1, config.in_channels, *size)
        images.append(window_intensities(x).to(device))
    return images


@torch.inference_mode()
def checked(candidate: Backend, reference: Backend, config: ModelConfig, device: torch.device) -> Backend:
    """candidate if its masks agree with the reference's on the check scans; raises BackendRefused if not."""
    share = agreement(candidate.predict, reference.predict, check_images(config, device), config.stride)
    if share < MIN_AGREEMENT:
        raise BackendRefused("disagrees", f"{candidate.name} agrees with fp32 eager on {share:.4%} of the "
                                          f"pixels (at least {MIN_AGREEMENT:.1%} needed)")
    return candidate


@dataclass(frozen=True)
class BackendSettings:
    """What the operator asked for (``serve --backend --precision --threads --cuda-graphs``)."""

    name: str = "torch"  # never auto here: the server resolves auto first (backend_choice.fastest_backend)
    precision: str = "auto"
    threads: int = 0  # forward threads on the CPU (0: torch's count)
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"unknown backend {self.name!r}; choose one of {list(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {list(PRECISIONS)}")


def build_backend(module: nn.Module, config: ModelConfig, device: torch.device, settings: BackendSettings,
                  run_normal: RunNormal = on_this_thread) -> tuple[Backend, BackendRefused | None]:
    """The backend a version is served by, and why it is not the one asked for (None when it is)."""
    if settings.name == "auto":
        raise ValueError("resolve backend auto with weldstream.server.backend_choice.fastest_backend first")
    reference = eager(module)
    try:
        candidate = _candidate(module, config, device, settings, run_normal)
        if candidate is None:
            return reference, None
        return checked(candidate, reference, config, device), None
    except BackendRefused as refused:
        return reference, refused
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - an export or session failure: serve eagerly, say why
        return reference, BackendRefused("failed", repr(exc))


def _candidate(module: nn.Module, config: ModelConfig, device: torch.device, settings: BackendSettings,
               run_normal: RunNormal) -> Backend | None:
    if settings.name == "torchscript":
        if device.type != "cpu":
            raise BackendRefused("failed", f"torchscript serves on the CPU only, not on {device}")
        from weldstream.server.torchscript_backend import torchscript_backend

        return torchscript_backend(module, config)
    if settings.name == "onnxruntime":
        if device.type != "cpu":
            raise BackendRefused("failed", f"onnxruntime serves on the CPU only, not on {device}")
        from weldstream.server.onnx_backend import onnx_backend

        return onnx_backend(module, config, settings.threads or torch.get_num_threads(), run_normal)
    dtype = autocast_dtype(device, settings.precision)
    if dtype is None:
        return None
    backend = autocast(module, dtype)
    if settings.cuda_graphs and device.type == "cuda":
        from weldstream.server.cuda_graphs import GraphCache

        return Backend(f"{backend.name}-graphs", GraphCache(backend.predict), pads_batches=True)
    return Backend(backend.name, backend.predict, pads_batches=device.type == "cuda")
