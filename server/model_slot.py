"""The live model behind one reference: loaded beside the old one, checked, warmed, then swapped.

Swapping is a single attribute assignment. A batch reads the slot once when it starts, so batches in
flight finish on the version they began with and every response can name its version.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch
from torch import nn

from weldstream.model import ModelConfig, build_model
from weldstream.weight_store import Manifest, WeightStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: int
    module: nn.Module
    config: ModelConfig
    device: torch.device
    untrained: bool
    manifest: Manifest | None = None


def prepare(module: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode on the device; channels_last is the faster conv layout on CPU and GPU alike."""
    module = module.to(device).eval()
    return module.to(memory_format=torch.channels_last)


@torch.inference_mode()
def warm_up(loaded: LoadedModel, size: int = 64) -> None:
    """One forward so the first real request does not pay for lazy initialisation."""
    x = torch.zeros(1, loaded.config.in_channels, size, size, device=loaded.device)
    loaded.module(x.contiguous(memory_format=torch.channels_last))


def fresh_model(config: ModelConfig, device: torch.device) -> LoadedModel:
    """Version 0: freshly initialised, flagged untrained until the learner publishes."""
    return LoadedModel(0, prepare(build_model(config), device), config, device, untrained=True)


def load_version(store: WeightStore, version: int, device: torch.device) -> LoadedModel:
    """Load a stored version (checksum verified by the store), build it and warm it up."""
    stored = store.load(version)
    module = build_model(stored.model_config, seed=None)
    module.load_state_dict(stored.state_dict)
    loaded = LoadedModel(version, prepare(module, device), stored.model_config, device, False, stored.manifest)
    warm_up(loaded)
    return loaded


class ModelSlot:
    """Holds the live LoadedModel; swap() only ever moves forward in version."""

    def __init__(self, initial: LoadedModel) -> None:
        self._current = initial
        self._lock = threading.Lock()

    def current(self) -> LoadedModel:
        return self._current

    def swap(self, candidate: LoadedModel) -> bool:
        """Install candidate if it is newer than the live version; returns whether it was installed."""
        with self._lock:
            if candidate.version <= self._current.version and not self._current.untrained:
                return False
            self._current = candidate
        log.info("model swapped to version %d", candidate.version)
        return True
