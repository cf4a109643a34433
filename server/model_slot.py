"""The live model behind one reference, and the retired one kept as the next version's home.

Swapping is a single attribute assignment. A batch leases the slot once when it starts, so batches in
flight finish on the version they began with and every response can name its version. The module a
swap retires is not thrown away: once its last batch has finished, the next version's weights are
copied into it. A swap therefore never constructs a module (hundreds of Python objects, GIL-heavy and
garbage for the collector) while requests are being served.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from weldstream.model import ModelConfig
from weldstream.server.backends import Backend, eager
from weldstream.weight_store import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: int
    module: nn.Module
    config: ModelConfig
    device: torch.device
    untrained: bool
    manifest: Manifest | None = None
    backend: Backend | None = None  # None: fp32 eager torch
    backend_refused: str = ""  # why the backend asked for is not the one serving ('' when it is)

    @property
    def runner(self) -> Backend:
        """What runs this version's forward pass."""
        return self.backend if self.backend is not None else eager(self.module)


class ModelSlot:
    """Holds the live LoadedModel; swap() moves forward in version unless told a pin wants an older one."""

    def __init__(self, initial: LoadedModel, spare: LoadedModel | None = None) -> None:
        self._current = initial
        self._retired = spare
        self._users: Counter[int] = Counter()  # id(module) -> batches running on it now
        self._changed = threading.Condition()

    def current(self) -> LoadedModel:
        return self._current

    @contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """The live model for one batch; its module is not reused for another version until released."""
        with self._changed:
            loaded = self._current
            self._users[id(loaded.module)] += 1
        try:
            yield loaded
        finally:
            with self._changed:
                self._users[id(loaded.module)] -= 1
                if not self._users[id(loaded.module)]:
                    del self._users[id(loaded.module)]
                self._changed.notify_all()

    def swap(self, candidate: LoadedModel, older: bool = False) -> bool:
        """Install candidate if it is newer than the live version (or, with ``older``, any other version:
        an operator's pin or rollback); returns whether it was installed."""
        with self._changed:
            live = self._current
            stale = candidate.version < live.version and not older
            if (stale or candidate.version == live.version) and not live.untrained:
                return False
            self._current = candidate
            if live.module is not candidate.module:
                self._retired = live
            self._changed.notify_all()
        log.info("model swapped to version %d", candidate.version)
        return True

    def take_spare(self, timeout_s: float = 30.0) -> LoadedModel | None:
        """The retired model, once no batch runs on it any more; None if there is none (or it stays busy).

        Blocks the calling (loader) thread, never the event loop. The caller owns the module until it
        hands it back with give_back() or installs it again with swap().
        """
        with self._changed:
            retired = self._retired
            if retired is None:
                return None
            idle = self._changed.wait_for(lambda: not self._users[id(retired.module)], timeout_s)
            if not idle or self._retired is not retired:
                return None
            self._retired = None
            return retired

    def give_back(self, spare: LoadedModel) -> None:
        """Return an unused spare (a load failed); its weights may be half-written, which is harmless
        because a spare is only ever served after a complete load and check."""
        with self._changed:
            if self._retired is None and spare.module is not self._current.module:
                self._retired = spare
