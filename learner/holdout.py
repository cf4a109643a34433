"""Which scans are held out for validation, and the capped per-domain validation sets they fill."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import torch
from torch import nn

from weldstream.features import encoder_summary, reference_of, stage_channels
from weldstream.gain_curve import mean_profile
from weldstream.scoring import scan_results


def scan_hash(scan_id: str) -> float:
    """A stable number in [0, 1) per scan id: the same scan is held out on every run and restart."""
    digest = hashlib.blake2b(scan_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_held_out(scan_id: str, share: float) -> bool:
    return scan_hash(scan_id) < share


class ValidationSets:
    """Up to `cap` held-out scans per domain, and at most `max_bytes` of them (scans are kept at native
    size, and 48 scans of 4096 x 4096 would be 3 GB): those with the smallest scan hash, so the set is
    stable."""

    def __init__(self, cap: int, max_bytes: int | None = None) -> None:
        self.cap = cap
        self.max_bytes = max_bytes
        self._items: dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]] = {}
        self._counter = itertools.count(1)
        self._revisions: dict[str, int] = {}  # domain -> changes with every change of its scans

    def add(self, scan_id: str, domain: str, x: torch.Tensor, y: torch.Tensor) -> None:
        items = self._items.setdefault(domain, [])
        entry = (scan_hash(scan_id), x, y)
        items.append(entry)
        removed = []
        while len(items) > 1 and (len(items) > self.cap or self._over_budget(items)):
            items.sort(key=lambda item: item[0])
            removed.append(items.pop())
        if removed == [entry]:
            return  # the set did not change
        self._revisions[domain] = next(self._counter)

    def _over_budget(self, items: list[tuple[float, torch.Tensor, torch.Tensor]]) -> bool:
        if self.max_bytes is None:
            return False
        used = sum(x.numel() * x.element_size() + y.numel() * y.element_size() for _, x, y in items)
        return used > self.max_bytes

    def domains(self) -> list[str]:
        return list(self._items)

    def size(self, domain: str) -> int:
        return len(self._items.get(domain, []))

    def revision(self, domain: str) -> int:
        """Equal revisions mean the same scans in the same order, so cached per-scan results still line up."""
        return self._revisions.get(domain, 0)

    def feature_reference(self, model: nn.Module, stride: int = 32) -> dict[str, dict]:
        """Per domain, the statistics of its held-out scans' pooled encoder features that servers measure
        drift against (weldstream/features.py); scans of one size share batches."""
        references = {}
        for domain, items in self._items.items():
            by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
            for _, x, _ in items:
                by_shape.setdefault(tuple(x.shape), []).append(x)
            device = next(model.parameters()).device
            summaries = [encoder_summary(model, torch.stack(xs).to(device), stride) for xs in by_shape.values()]
            references[domain] = reference_of(torch.cat(summaries), stage_channels(model))
        return references

    def gain_profiles(self) -> dict[str, np.ndarray]:
        """Per domain, the (2, BINS) mean brightness profile of its held-out scans along rows and columns
        (weldstream/gain_curve.py): what a server matches a rig with another gain curve to."""
        return {domain: mean_profile(x[None] for _, x, _ in items) for domain, items in self._items.items() if items}

    def entries(self, domain: str) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
        """The domain's held-out scans in set order; an entry is the same object for as long as it stays in
        the set, so results cached by entry stay valid until the entry leaves (a relabel is a new entry)."""
        return list(self._items.get(domain, []))

    def scan_confusions(self, model: nn.Module, device: torch.device, domains: list[str] | None = None,
                        stride: int = 32) -> dict[str, np.ndarray]:
        """Per-scan confusion matrices (N, K, K) of `model` on every domain's held-out scans, or only on `domains`.

        Scans are scored whole, at their native size, padded to the model's stride as the server pads
        them; scans of one size share batches, and results keep the set's order.
        """
        return {domain: self.scored(model, device, domain, stride=stride)[0]
                for domain in (self._items if domains is None else domains)}

    def scored(self, model: nn.Module, device: torch.device, domain: str, indices: list[int] | None = None,
               stride: int = 32, with_features: bool = False) -> tuple[np.ndarray, torch.Tensor | None]:
        """One domain's per-scan confusions (in set order, or of the scans at ``indices``, in that order) and,
        with ``with_features``, the same pass's pooled encoder features (None for a model without an encoder)."""
        items = self._items[domain]
        chosen = list(range(len(items))) if indices is None else list(indices)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for position, index in enumerate(chosen):
            by_shape.setdefault(tuple(items[index][1].shape), []).append(position)
        per_scan: list[np.ndarray | None] = [None] * len(chosen)
        features: list[torch.Tensor | None] = [None] * len(chosen)
        for positions in by_shape.values():
            images = torch.stack([items[chosen[p]][1] for p in positions]).to(device)
            masks = torch.stack([items[chosen[p]][2] for p in positions]).to(device)
            confusions, pooled = scan_results(model, images, masks, stride=stride, with_features=with_features)
            for row, position in enumerate(positions):
                per_scan[position] = confusions[row]
                features[position] = None if pooled is None else pooled[row]
        stacked = np.stack(per_scan) if per_scan else np.zeros((0, 0, 0), dtype=np.int64)  # type: ignore[arg-type]
        if not with_features or any(f is None for f in features) or not features:
            return stacked, None
        return stacked, torch.stack(features)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]]:
        return {d: list(items) for d, items in self._items.items()}

    def load_state_dict(self, state: dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]]) -> None:
        self._items = {d: list(items) for d, items in state.items()}
        self._revisions = {d: next(self._counter) for d in self._items}
