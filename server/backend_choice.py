"""``--backend auto``: on the CPU, the fastest verified backend of this machine, measured once at start.

Which CPU backend is fastest depends on the CPU: on one 2-core Xeon frozen TorchScript ran the serving
head at 0.72x of eager torch at 256x256 and 0.71x at 512x512 while ONNX Runtime ran at 0.84x and 1.07x;
on another, ONNX Runtime was the faster. So the server builds each candidate for its first version,
keeps those whose masks agree with fp32 eager (the same gate as always), times a scan of 256x256 on
each and serves every later version with the winner. On CUDA auto means torch (autocast, CUDA graphs).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from weldstream.model import ModelConfig
from weldstream.server.backends import CPU_CANDIDATES, BackendSettings, RunNormal, build_backend, on_this_thread
from weldstream.tiles import Predictor

log = logging.getLogger(__name__)
TIMING_SIZE = (256, 256)
WARM_UP_CALLS = 3
TIMED_CALLS = 7


def time_ms(predict: Predictor, image: torch.Tensor) -> float:
    """Median milliseconds of one forward on ``image`` after a few warm-up calls."""
    with torch.inference_mode():
        for _ in range(WARM_UP_CALLS):
            predict(image)
        times = []
        for _ in range(TIMED_CALLS):
            started = time.perf_counter()
            predict(image)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def fastest_backend(module: nn.Module, config: ModelConfig, device: torch.device, settings: BackendSettings,
                    run_normal: RunNormal = on_this_thread,
                    timer: Callable[[Predictor, torch.Tensor], float] = time_ms) -> tuple[str, dict[str, float]]:
    """The backend ``settings`` stand for on ``device`` (settings.name unless it is auto), and the median
    milliseconds of each verified CPU candidate when auto was measured."""
    if settings.name != "auto":
        return settings.name, {}
    if device.type != "cpu":
        return "torch", {}
    image = torch.rand(1, config.in_channels, *TIMING_SIZE, device=device)
    timings: dict[str, float] = {}
    for name in CPU_CANDIDATES:
        backend, refused = build_backend(module, config, device, dataclasses.replace(settings, name=name), run_normal)
        if refused is not None:
            log.warning("auto backend: %s is not a candidate (%s)", name, refused)
            continue
        timings[name] = timer(backend.predict, image)
    chosen = min(timings, key=timings.__getitem__)
    log.info("auto backend: serving with %s (median ms of a %dx%d forward: %s)", chosen, *TIMING_SIZE,
             ", ".join(f"{name} {ms:.1f}" for name, ms in timings.items()))
    return chosen, timings
