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
from weldstream.preprocess import pad_to_multiple
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
def warm_up(loaded: LoadedModel, shapes: tuple[tuple[int, int], ...] = ((64, 64),)) -> None:
    """A forward at every input size the server has been seeing, so the first real request on a new
    version does not pay for lazy initialisation and per-shape kernel selection (hundreds of ms on CPU)."""
    for height, width in shapes or ((64, 64),):
        x = torch.zeros(1, loaded.config.in_channels, height, width, device=loaded.device)
        loaded.module(pad_to_multiple(x, loaded.config.stride).contiguous(memory_format=torch.channels_last))


def fresh_model(config: ModelConfig, device: torch.device) -> LoadedModel:
    """Version 0: freshly initialised, flagged untrained until the learner publishes."""
    return LoadedModel(0, prepare(build_model(config), device), config, device, untrained=True)


def load_version(store: WeightStore, version: int, device: torch.device,
                 warm_shapes: tuple[tuple[int, int], ...] = ()) -> LoadedModel:
    """Load a stored version (checksum verified by the store), build it and warm it up."""
    stored = store.load(version)
    module = build_model(stored.model_config, seed=None)
    module.load_state_dict(stored.state_dict)
    loaded = LoadedModel(version, prepare(module, device), stored.model_config, device, False, stored.manifest)
    warm_up(loaded, warm_shapes)
    return loaded


class ModelSlot:
    """Holds the live LoadedModel; swap() only ever moves forward in version."""

    def __init__(self, initial: LoadedModel) -> None:
        self._current = initial
        self._lock = threading.Lock()
        self._recent_shapes: dict[tuple[int, int], None] = {}  # insertion-ordered, newest last

    def note_shape(self, height: int, width: int) -> None:
        """Remember an input size being served, so the next version is warmed up at it."""
        shape = (height, width)
        self._recent_shapes.pop(shape, None)
        self._recent_shapes[shape] = None
        while len(self._recent_shapes) > 3:
            self._recent_shapes.pop(next(iter(self._recent_shapes)))

    def recent_shapes(self) -> tuple[tuple[int, int], ...]:
        return tuple(self._recent_shapes)

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
