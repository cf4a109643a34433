"""Bringing a stored version into memory beside the live one: weights, checks and warm-up.

Everything here runs on one background thread (`loader_thread()`) that Linux schedules at the lowest
priority. The inference threads always win the CPU, so a swap uses only the cycles requests leave
idle: on a 2-core box that is the difference between a latency spike at every swap and none.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import nn

from weldstream.errors import CorruptVersion
from weldstream.model import ModelConfig, build_model
from weldstream.preprocess import pad_to_multiple
from weldstream.server.backends import BackendSettings, RunNormal, build_backend, on_this_thread
from weldstream.server.model_slot import LoadedModel
from weldstream.weight_store import WeightStore

log = logging.getLogger(__name__)
LOWEST_PRIORITY = 19  # nice value
WARM_UP_SHAPE = (64, 64)


def prepare(module: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode on the device; channels_last is the faster conv layout on CPU and GPU alike."""
    module = module.to(device).eval()
    return module.to(memory_format=torch.channels_last)


@torch.inference_mode()
def warm_up(loaded: LoadedModel) -> None:
    """One forward, so the first real request on a new version does not pay for lazy initialisation.
    Per-shape kernel choices are cached process-wide, so sizes already served stay fast on a new module.

    Doubles as the last check before a version goes live: weights that produce NaN or inf (a diverged
    training run that still checksums correctly) are refused here instead of being served.
    """
    x = torch.zeros(1, loaded.config.in_channels, *WARM_UP_SHAPE, device=loaded.device)
    logits = loaded.module(pad_to_multiple(x, loaded.config.stride).contiguous(memory_format=torch.channels_last))
    if not bool(torch.isfinite(logits).all()):
        raise CorruptVersion(f"version {loaded.version}: the model produces non-finite outputs")


def fresh_model(config: ModelConfig, device: torch.device) -> LoadedModel:
    """Version 0: freshly initialised, flagged untrained until the learner publishes."""
    return LoadedModel(0, prepare(build_model(config), device), config, device, untrained=True)


def with_backend(loaded: LoadedModel, settings: BackendSettings,
                 run_normal: RunNormal = on_this_thread) -> LoadedModel:
    """The version with the backend asked for, built and checked against fp32 eager (see ``backends``);
    fp32 eager, with the reason recorded in ``backend_refused``, when that backend is refused."""
    backend, refused = build_backend(loaded.module, loaded.config, loaded.device, settings, run_normal)
    if refused is not None:
        log.warning("version %d is served by fp32 eager torch instead of %s: %s", loaded.version, settings.name,
                    refused)
    return dataclasses.replace(loaded, backend=backend, backend_refused=refused.reason if refused else "")


def load_version(store: WeightStore, version: int, device: torch.device,
                 reuse: LoadedModel | None = None, backend: BackendSettings | None = None,
                 run_normal: RunNormal = on_this_thread) -> LoadedModel:
    """Load a stored version (checksum verified by the store), check it, warm it up and build its backend.

    With `reuse` (a retired model of the same configuration) the weights are copied into its module,
    which is already on the device, in eval mode and in channels_last layout; otherwise a new module
    is built.
    """
    stored = store.load(version)
    config = stored.model_config
    if reuse is not None and reuse.config == config and reuse.device == device:
        module = reuse.module
    else:
        module = prepare(build_model(config, seed=None), device)
    with _side_stream(device), torch.no_grad():
        try:
            module.load_state_dict(stored.state_dict)
        except RuntimeError as exc:  # missing, unexpected or misshapen tensors: weights of another model
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            raise CorruptVersion(f"version {version}: its weights do not fit its model ({exc})") from None
        loaded = LoadedModel(version, module, config, device, False, stored.manifest)
        warm_up(loaded)
        return with_backend(loaded, backend or BackendSettings(), run_normal)


@contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, copy and warm up on a stream of their own so the live model's kernels never queue
    behind them; nothing to do on CPU."""
    if device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # the retired module's last batch is done with it
    with torch.cuda.stream(stream):
        yield
    stream.synchronize()


def lower_thread_priority(niceness: int = LOWEST_PRIORITY) -> None:
    """Linux schedules threads one by one, so the calling thread (and the OpenMP workers it starts
    later, which inherit its niceness) yields the CPU to every normal-priority thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError as exc:  # a sandbox may forbid it; swaps still work, only less gently
        log.warning("could not lower the loader thread's priority: %s", exc)


def loader_thread() -> ThreadPoolExecutor:
    """The one low-priority thread that loads, checks and warms up new versions."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader", initializer=lower_thread_priority)
