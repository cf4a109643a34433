"""``--backend auto``: on the CPU, the fastest verified backend of this machine, measured once at start.

Which CPU backend is fastest depends on the CPU: on one 2-core Xeon frozen TorchScript ran the serving
head at 0.72x of eager torch at 256x256 and 0.71x at 512x512 while ONNX Runtime ran at 0.84x and 1.07x;
on another, ONNX Runtime was the faster. So the server builds each candidate for its first version,
keeps those whose masks agree with fp32 eager (the same gate as always), times a scan of 384x384 on
each, in turns so that all see the same load, and serves every later version with the winner. On CUDA
auto means torch (autocast, CUDA graphs).
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
# Between the 256x256 B-scans and the 512x512 and larger radiographs a server sees; the backends' order
# can change with the size (ONNX Runtime gains on small scans, frozen TorchScript on large ones).
TIMING_SIZE = (384, 384)
WARM_UP_CALLS = 2
TIMED_ROUNDS = 4
CALLS_A_TURN = 3  # the first call of each turn is not counted


def time_ms(predictors: dict[str, Predictor], image: torch.Tensor) -> dict[str, float]:
    """Median milliseconds of one forward on ``image`` per predictor, timed in rounds so that a change in
    the machine's load falls on all of them alike. Each predictor's turn is a few calls in a row and the
    first is not counted: the previous candidate's thread pool may still be spinning on the same cores
    (timed one call a turn, a server chose frozen TorchScript at 92.6 ms against ONNX Runtime's 96.8 on a
    machine where, called from outside, ONNX Runtime answered in 0.68x of TorchScript's time at 256x256
    and 0.80x at 512x512)."""
    times: dict[str, list[float]] = {name: [] for name in predictors}
    with torch.inference_mode():
        for predict in predictors.values():
            for _ in range(WARM_UP_CALLS):
                predict(image)
        for _ in range(TIMED_ROUNDS):
            for name, predict in predictors.items():
                for call in range(CALLS_A_TURN):
                    started = time.perf_counter()
                    predict(image)
                    if call:
                        times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def fastest_backend(module: nn.Module, config: ModelConfig, device: torch.device, settings: BackendSettings,
                    run_normal: RunNormal = on_this_thread,
                    timer: Callable[[dict[str, Predictor], torch.Tensor], dict[str, float]] = time_ms
                    ) -> tuple[str, dict[str, float]]:
    """The backend ``settings`` stand for on ``device`` (settings.name unless it is auto), and the median
    milliseconds of each verified CPU candidate when auto was measured."""
    if settings.name != "auto":
        return settings.name, {}
    if device.type != "cpu":
        return "torch", {}
    image = torch.rand(1, config.in_channels, *TIMING_SIZE, device=device)
    verified: dict[str, Predictor] = {}
    for name in CPU_CANDIDATES:
        backend, refused = build_backend(module, config, device, dataclasses.replace(settings, name=name), run_normal)
        if refused is not None:
            log.warning("auto backend: %s is not a candidate (%s)", name, refused)
            continue
        verified[name] = backend.predict
    timings = timer(verified, image)
    chosen = min(timings, key=timings.__getitem__)
    log.info("auto backend: serving with %s (median ms of a %dx%d forward: %s)", chosen, *TIMING_SIZE,
             ", ".join(f"{name} {ms:.1f}" for name, ms in timings.items()))
    return chosen, timings
