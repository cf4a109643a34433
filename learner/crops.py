"""Training crops at the scan's native resolution, most of them centred on a defect.

The server infers whole scans at their native size, so the learner trains on windows cut from native
scans (never on resized ones): a crack is as many pixels wide in training as in service. Defects cover
a few percent of a scan, so most crops are centred on a random defect pixel and the rest are placed
uniformly, which keeps clean texture (and the false alarms it can cause) in the gradient too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_to_at_least(x: Tensor, y: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Reflect-pad (C, H, W) and its (H, W) mask on the bottom/right until both sides are >= size."""
    pad_h, pad_w = max(0, size - x.shape[-2]), max(0, size - x.shape[-1])
    if not pad_h and not pad_w:
        return x, y
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    x = F.pad(x[None], (0, pad_w, 0, pad_h), mode=mode)[0]
    y = F.pad(y[None, None].float(), (0, pad_w, 0, pad_h), mode=mode)[0, 0].to(y.dtype)
    return x, y


def crop_origin(height: int, width: int, size: int, defects: Tensor | None, on_defect: bool,
                generator: torch.Generator) -> tuple[int, int]:
    """Top-left corner of a size x size crop: around a random defect pixel when asked and present."""
    if on_defect and defects is not None and len(defects):
        row, col = (int(v) for v in defects[int(torch.randint(len(defects), (1,), generator=generator))])
        # The defect pixel lands anywhere in the crop but its outer eighth, so it has context around it.
        margin = size // 8
        top = row - int(torch.randint(margin, max(margin + 1, size - margin), (1,), generator=generator))
        left = col - int(torch.randint(margin, max(margin + 1, size - margin), (1,), generator=generator))
    else:
        top = int(torch.randint(height - size + 1, (1,), generator=generator))
        left = int(torch.randint(width - size + 1, (1,), generator=generator))
    return min(max(top, 0), height - size), min(max(left, 0), width - size)


def defect_pixels(y: Tensor) -> Tensor:
    """(K, 2) row/column of every defect pixel of a (H, W) mask, on the CPU (for cheap random picks)."""
    return (y > 0).nonzero().to("cpu", torch.int32)


def cut_crop(x: Tensor, y: Tensor, defects: Tensor | None, size: int, on_defect: bool,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One (C, size, size) crop and its (size, size) mask from a native scan (padded if smaller)."""
    x, y = pad_to_at_least(x, y, size)
    top, left = crop_origin(x.shape[-2], x.shape[-1], size, defects, on_defect, generator)
    return x[:, top:top + size, left:left + size], y[top:top + size, left:left + size]
