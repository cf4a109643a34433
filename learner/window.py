"""The training window: the most recent labeled scans, at native size, kept on the learner's device.

Labels arrive far slower than a device can learn from them, so the learner keeps training on what it
has between arrivals: every step draws fresh crops (``crops``) from the scans in the window. The window
is bounded by scans and by bytes (a 4096 x 4096 scan is 64 MB in float32), oldest out first; what leaves
it is still represented in the episodic memory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from weldstream.learner.crops import cut_crop, defect_pixels


@dataclass
class WindowScan:
    scan_id: str
    domain: str
    x: Tensor  # (C, H, W) float32, normalised, native size
    y: Tensor  # (H, W) uint8 class map
    defects: Tensor  # (K, 2) defect pixel coordinates, CPU

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size()


class TrainingWindow:
    """Recent scans of the stream (any domains), sampled as random, mostly defect-centred crops."""

    def __init__(self, capacity: int, max_bytes: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1 or max_bytes < 1:
            raise ValueError("a training window needs room for at least one scan")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.device = torch.device(device)
        self._scans: deque[WindowScan] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._scans)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def domains(self) -> list[str]:
        """Domains with scans in the window, oldest first."""
        return list(dict.fromkeys(scan.domain for scan in self._scans))

    def scan_ids(self) -> list[str]:
        return [scan.scan_id for scan in self._scans]

    def add(self, scan_id: str, x: Tensor, y: Tensor, domain: str) -> WindowScan:
        """Keep a scan (oldest out past the bounds); returns it with its defect pixels found."""
        scan = WindowScan(scan_id, domain, x.to(self.device, torch.float32), y.to(self.device, torch.uint8),
                          defect_pixels(y))
        self._scans.append(scan)
        self._bytes += scan.nbytes
        while len(self._scans) > 1 and (len(self._scans) > self.capacity or self._bytes > self.max_bytes):
            self._bytes -= self._scans.popleft().nbytes
        return scan

    def sample(self, n: int, size: int, defect_share: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n crops (n, C, size, size) and masks (n, size, size), each from a scan drawn uniformly."""
        if not self._scans:
            raise ValueError("the training window is empty")
        xs, ys = [], []
        for _ in range(n):
            scan = self._scans[int(torch.randint(len(self._scans), (1,), generator=generator))]
            on_defect = float(torch.rand(1, generator=generator)) < defect_share
            x, y = cut_crop(scan.x, scan.y, scan.defects, size, on_defect, generator)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    def state_dict(self) -> dict[str, Any]:
        return {"scans": [(s.scan_id, s.domain, s.x.cpu(), s.y.cpu()) for s in self._scans]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._scans.clear()
        self._bytes = 0
        for scan_id, domain, x, y in state["scans"]:
            self.add(scan_id, x, y, domain)
