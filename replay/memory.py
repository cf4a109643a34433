"""The episodic memory: a fixed budget of labeled scans per domain, kept on the model's device.

Storage is one image buffer ``(slots, C, H, W)`` float32 and one mask buffer ``(slots, H, W)`` uint8.
Each domain owns a contiguous block of ``per_domain_capacity`` slots; a domain seen for the first time
enlarges both buffers by one block (domains arrive rarely, so the copy is paid once per domain), and no
domain can ever hold more than its block.

Selection policy: reservoir sampling (Vitter's algorithm R), run separately for every domain. The n-th
scan a domain shows replaces a uniformly chosen stored scan with probability ``capacity / n``, so at any
time each domain's block is a uniform sample, without replacement, of every scan that domain has shown,
however long the stream. A batch is processed scan by scan in order, exactly as if it had arrived one
scan at a time. (A class-aware reservoir that protects scans with rare defect classes was considered;
plain reservoir is kept because it is unbiased, and defect balance is the loss's job, see
``weldstream.losses``.)

All random choices (which slot to replace, which scans to sample) come from one CPU ``torch.Generator``
whose state is part of ``state_dict()``, so a restored memory makes the same choices as the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class ReplayMemory:
    """Per-domain reservoir of (scan, mask) pairs; knows nothing about the model or the optimizer."""

    def __init__(self, per_domain_capacity: int, device: torch.device | str = "cpu", seed: int = 0) -> None:
        if per_domain_capacity < 1:
            raise ValueError(f"per_domain_capacity must be >= 1, got {per_domain_capacity}")
        self.per_domain_capacity = int(per_domain_capacity)
        self.device = torch.device(device)
        self._generator = torch.Generator().manual_seed(seed)
        self._domains: list[str] = []  # first-seen order; domain i owns slots [i * cap, (i + 1) * cap)
        self._fill: list[int] = []  # stored scans per domain
        self._seen: list[int] = []  # scans shown per domain
        self._x: Tensor | None = None  # (domains * cap, C, H, W) float32
        self._y: Tensor | None = None  # (domains * cap, H, W) uint8

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return sum(self._fill)

    def domains(self) -> list[str]:
        return list(self._domains)

    def per_domain(self) -> dict[str, int]:
        return dict(zip(self._domains, self._fill, strict=True))

    def seen(self) -> dict[str, int]:
        return dict(zip(self._domains, self._seen, strict=True))

    def nbytes(self) -> int:
        """Bytes of the allocated image and mask buffers (every domain's whole block)."""
        if self._x is None or self._y is None:
            return 0
        return self._x.numel() * self._x.element_size() + self._y.numel() * self._y.element_size()

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) shared by every stored scan, fixed by the first ``add``."""
        return None if self._x is None else tuple(self._x.shape[1:])  # type: ignore[return-value]

    # ------------------------------------------------------------------ writing
    def add(self, x: Tensor, y: Tensor, domain: str) -> None:
        """Offer a batch x (B, C, H, W) float32 with masks y (B, H, W) integer classes from ``domain``."""
        self._check_batch(x, y, domain)
        if x.shape[0] == 0:
            return  # an empty batch neither creates a domain nor counts as seen
        if self._x is None:
            self._allocate(tuple(x.shape[1:]))
        if domain not in self._domains:
            self._add_domain(domain)
        d = self._domains.index(domain)

        slot_for_row: dict[int, int] = {}  # slot within the domain's block -> batch row; later rows win
        for row in range(x.shape[0]):
            self._seen[d] += 1
            if self._fill[d] < self.per_domain_capacity:
                slot_for_row[self._fill[d]] = row
                self._fill[d] += 1
                continue
            j = int(torch.randint(self._seen[d], (1,), generator=self._generator))
            if j < self.per_domain_capacity:
                slot_for_row[j] = row
        if not slot_for_row:
            return
        base = d * self.per_domain_capacity
        slots = torch.tensor([base + s for s in slot_for_row], device=self.device)
        rows = torch.tensor(list(slot_for_row.values()), device=x.device)
        self._x[slots] = x[rows].to(self.device, torch.float32)
        self._y[slots] = y[rows].to(self.device, torch.uint8)

    def _check_batch(self, x: Tensor, y: Tensor, domain: str) -> None:
        if not isinstance(domain, str) or not domain:
            raise ValueError(f"domain must be a non-empty string, got {domain!r}")
        if x.dim() != 4 or y.dim() != 3:
            raise ValueError(
                f"expected x (B, C, H, W) and y (B, H, W), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[1:]:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} disagree on batch size or H, W")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must be an integer class map, got {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > 255):
            raise ValueError("mask classes must lie in 0..255")
        shape = self.image_shape
        if shape is not None and tuple(x.shape[1:]) != shape:
            raise ValueError(f"every scan in memory must be {shape} (C, H, W); got {tuple(x.shape[1:])}")

    def _allocate(self, shape: tuple[int, ...]) -> None:
        self._x = torch.empty((0, *shape), dtype=torch.float32, device=self.device)
        self._y = torch.empty((0, *shape[1:]), dtype=torch.uint8, device=self.device)

    def _add_domain(self, domain: str) -> None:
        """Enlarge both buffers by one block of ``per_domain_capacity`` slots."""
        assert self._x is not None and self._y is not None
        cap = self.per_domain_capacity
        self._x = torch.cat([self._x, self._x.new_zeros((cap, *self._x.shape[1:]))])
        self._y = torch.cat([self._y, self._y.new_zeros((cap, *self._y.shape[1:]))])
        self._domains.append(domain)
        self._fill.append(0)
        self._seen.append(0)

    # ------------------------------------------------------------------ reading
    def sample(self, n: int, domain: str | Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """Up to n stored pairs drawn uniformly without replacement, on the memory's device.

        ``domain`` limits the draw to one domain or a list of domains; None draws from all of them.
        Returns x (m, C, H, W) float32 and y (m, H, W) uint8 with m = min(n, available).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self._x is None or self._y is None:
            raise ValueError("the memory is empty: nothing has been added yet")
        wanted = self._domains if domain is None else [domain] if isinstance(domain, str) else list(domain)
        unknown = [d for d in wanted if d not in self._domains]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; the memory holds {self._domains}")
        # Candidate slots in a fixed order (domain order, then fill order) so the draw depends only on
        # the stored content and the generator, not on how the buffer happens to be laid out.
        cap = self.per_domain_capacity
        candidates = torch.cat(
            [torch.arange(fill) + i * cap for i, fill in enumerate(self._fill) if self._domains[i] in wanted]
            or [torch.empty(0, dtype=torch.long)]
        )
        pick = torch.randperm(candidates.numel(), generator=self._generator)[:n]
        slots = candidates[pick].to(self.device)
        return self._x[slots], self._y[slots]

    def first(self, n: int, domain: str) -> tuple[Tensor, Tensor]:
        """The first n stored pairs of one domain, with no random draw: a fixed probe that measures the
        same scans every time (a past domain's block does not change until that domain is shown again)."""
        if domain not in self._domains:
            raise ValueError(f"unknown domain {domain!r}; the memory holds {self._domains}")
        assert self._x is not None and self._y is not None
        d = self._domains.index(domain)
        start = d * self.per_domain_capacity
        stop = start + min(max(0, n), self._fill[d])
        return self._x[start:stop], self._y[start:stop]

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Stored scans (compacted, domain order), counts and RNG state; save it beside the model."""
        cap = self.per_domain_capacity
        keep = [torch.arange(fill) + i * cap for i, fill in enumerate(self._fill)]
        index = torch.cat(keep) if keep else torch.empty(0, dtype=torch.long)
        return {
            "per_domain_capacity": cap,
            "domains": list(self._domains),
            "fill": list(self._fill),
            "seen": list(self._seen),
            "x": None if self._x is None else self._x[index.to(self.device)].clone(),
            "y": None if self._y is None else self._y[index.to(self.device)].clone(),
            "rng_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore from ``state_dict()``; ``device`` (like torch.load's map_location) moves the buffers."""
        if device is not None:
            self.device = torch.device(device)
        cap = int(state["per_domain_capacity"])
        fill, seen = [int(v) for v in state["fill"]], [int(v) for v in state["seen"]]
        if any(f > cap or f > s for f, s in zip(fill, seen, strict=True)):
            raise ValueError("inconsistent replay state: a domain holds more than its budget or history")
        self.per_domain_capacity = cap
        self._domains, self._fill, self._seen = list(state["domains"]), fill, seen
        self._generator.set_state(state["rng_state"])
        if state["x"] is None:
            self._x = self._y = None
            return
        x, y = state["x"].to(self.device), state["y"].to(self.device)
        self._x = x.new_zeros((len(self._domains) * cap, *x.shape[1:]))
        self._y = y.new_zeros((len(self._domains) * cap, *y.shape[1:]))
        start = 0
        for i, f in enumerate(fill):
            self._x[i * cap : i * cap + f] = x[start : start + f]
            self._y[i * cap : i * cap + f] = y[start : start + f]
            start += f

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> ReplayMemory:
        memory = cls(int(state["per_domain_capacity"]), device=device)
        memory.load_state_dict(state)
        return memory
