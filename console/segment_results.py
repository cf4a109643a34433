"""The last scans people tried, kept in memory so their pictures can be fetched after the answer.

Bounded twice: at most ``keep`` results and at most ``max_bytes`` of pictures, the oldest dropped first,
so a run of large scans cannot grow the console. Nothing is written to disk; a restart forgets them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Tried:
    scan_png: bytes  # the scan windowed to 8 bits for the eye
    mask_png: bytes  # class indices, one byte a pixel

    @property
    def size(self) -> int:
        return len(self.scan_png) + len(self.mask_png)


class TriedScans:
    def __init__(self, keep: int = 50, max_bytes: int = 512 << 20) -> None:
        self.keep, self.max_bytes = keep, max_bytes
        self._items: OrderedDict[str, Tried] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: str, tried: Tried) -> None:
        with self._lock:
            self._items[key] = tried
            self._bytes += tried.size
            while len(self._items) > self.keep or (self._bytes > self.max_bytes and len(self._items) > 1):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.size

    def get(self, key: str) -> Tried | None:
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)
