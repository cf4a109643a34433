"""Side-by-side timing of one training step: naive vs GEM (round robin, every step) vs A-GEM.

``benchmark_steps`` builds the default model, fills a replay memory with k past domains of synthetic
scans and times ``gem_step`` for each strategy on the same device in one run. ``weldstream bench
gem-step`` prints ``format_table(benchmark_steps(...))``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import psutil
import torch

from weldstream.model import ModelConfig, build_model
from weldstream.replay.gem import ReferenceGradients, StepConfig, gem_step
from weldstream.replay.memory import ReplayMemory

VARIANTS: dict[str, StepConfig] = {
    "naive": StepConfig(strategy="naive"),
    "gem/round_robin": StepConfig(strategy="gem", refresh="round_robin"),
    "gem/every_step": StepConfig(strategy="gem", refresh="every_step"),
    "agem": StepConfig(strategy="agem"),
    # The learner's default and its baseline: both add `rehearsal` memory scans to the batch, so compare
    # replay-gem with replay to see what the projection machinery costs on top of rehearsal.
    "replay": StepConfig(strategy="replay"),
    "replay-gem": StepConfig(strategy="replay-gem"),
    # Its worst case: every past domain counts as forgotten, so every step splits the gradient into its
    # current and rehearsal parts (one more backward) and projects the current part.
    "replay-gem/guard": StepConfig(strategy="replay-gem", forgetting_tolerance=-1.0),
}


def synthetic_batch(n: int, size: tuple[int, int], classes: int, generator: torch.Generator) -> tuple:
    """Noise scans with a few bright rectangles of random defect classes: x (n,1,H,W), y (n,H,W)."""
    h, w = size
    x = 0.1 * torch.randn((n, 1, h, w), generator=generator)
    y = torch.zeros((n, h, w), dtype=torch.uint8)
    for i in range(n):
        for _ in range(3):
            top, left = (int(torch.randint(s // 2, (1,), generator=generator)) for s in size)
            dh, dw = (int(torch.randint(2, max(3, s // 4), (1,), generator=generator)) for s in size)
            cls = int(torch.randint(1, classes, (1,), generator=generator))
            y[i, top : top + dh, left : left + dw] = cls
            x[i, 0, top : top + dh, left : left + dw] += 0.2 * cls
    return x, y


def benchmark_steps(
    past_domains: Sequence[int] = (1, 3, 5),
    batch: int = 8,
    size: tuple[int, int] = (128, 128),
    repeats: int = 20,
    warmup: int = 3,
    device: torch.device | str | None = None,
    per_domain_capacity: int = 32,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (past domains, variant): mean step seconds, ratio to naive, phases and peak memory.

    Every variant gets a fresh default model (same seed) and AdamW, ``warmup`` untimed steps, then
    ``repeats`` timed ones on the same current batches and the same memory. Peak memory is
    ``torch.cuda.max_memory_allocated`` over the timed steps on CUDA, else the process RSS afterwards.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_cfg = ModelConfig()
    generator = torch.Generator().manual_seed(seed)
    current = [synthetic_batch(batch, size, len(model_cfg.classes), generator) for _ in range(4)]
    rows: list[dict[str, Any]] = []
    _warm_process(model_cfg, current[0], device, warmup)
    for k in past_domains:
        memory = ReplayMemory(per_domain_capacity, device=device, seed=seed)
        for d in range(k):
            scans = synthetic_batch(per_domain_capacity, size, len(model_cfg.classes), generator)
            memory.add(*scans, f"past-{d}")
        naive_s = naive_median_s = None
        for name, cfg in VARIANTS.items():
            model = build_model(model_cfg, seed=seed).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            references = ReferenceGradients()
            stats = []
            _reset_peak(device)
            for i in range(warmup + repeats):
                start = time.perf_counter()
                batch_i = current[i % len(current)]
                step = gem_step(model, optimizer, batch_i, memory, cfg, "current", references)
                wall = time.perf_counter() - start  # gem_step synchronises CUDA before returning
                if i >= warmup:
                    stats.append((wall, step))
            mean_s = statistics.fmean(w for w, _ in stats)
            median_s = statistics.median(w for w, _ in stats)  # robust to a noisy neighbour on the machine
            if name == "naive":
                naive_s, naive_median_s = mean_s, median_s
            rows.append(
                {
                    "past_domains": k,
                    "variant": name,
                    "step_ms": 1e3 * mean_s,
                    "step_ms_std": 1e3 * statistics.pstdev(w for w, _ in stats),
                    "ratio_to_naive": mean_s / naive_s if naive_s else float("nan"),
                    "step_ms_median": 1e3 * median_s,
                    "median_ratio_to_naive": median_s / naive_median_s if naive_median_s else float("nan"),
                    "memory_ms": 1e3 * statistics.fmean(s.memory_s for _, s in stats),
                    "forward_backward_ms": 1e3 * statistics.fmean(s.forward_backward_s for _, s in stats),
                    "projection_ms": 1e3 * statistics.fmean(s.projection_s for _, s in stats),
                    "projected_fraction": statistics.fmean(float(s.projected) for _, s in stats),
                    "peak_memory_mb": _peak_memory_mb(device),
                    "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_rss",
                    "device": _device_name(device),
                    "batch": batch,
                    "size": f"{size[0]}x{size[1]}",
                }
            )
            del model, optimizer, references
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width text table of ``benchmark_steps`` rows."""
    columns = [
        ("past", "past_domains", "{:>4d}"),
        ("variant", "variant", "{:<16s}"),
        ("step ms", "step_ms", "{:>9.2f}"),
        ("± ms", "step_ms_std", "{:>7.2f}"),
        ("x naive", "ratio_to_naive", "{:>7.2f}"),
        ("median ms", "step_ms_median", "{:>9.2f}"),
        ("x naive (med)", "median_ratio_to_naive", "{:>7.2f}"),
        ("memory ms", "memory_ms", "{:>9.2f}"),
        ("fwd/bwd ms", "forward_backward_ms", "{:>10.2f}"),
        ("proj ms", "projection_ms", "{:>8.2f}"),
        ("projected", "projected_fraction", "{:>9.2f}"),
        ("peak MB", "peak_memory_mb", "{:>9.1f}"),
    ]
    cells = [[fmt.format(row[key]) for _, key, fmt in columns] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(columns)]
    lines = ["  ".join(title.rjust(w) for (title, _, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    if rows:
        first = rows[0]
        lines.append(f"device: {first['device']}, batch {first['batch']}, {first['size']}")
        lines.append(f"peak MB = {first['memory_kind']}")
    return "\n".join(lines)


def _warm_process(model_cfg: ModelConfig, batch: tuple, device: torch.device, steps: int) -> None:
    """Pay the process's one-off costs (allocator growth, kernel selection) before any row is timed,
    so the first naive baseline is not slower than the variants it is compared with."""
    model = build_model(model_cfg, seed=0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    empty = ReplayMemory(1, device=device)
    for _ in range(max(steps, 3)):
        gem_step(model, optimizer, batch, empty, StepConfig(strategy="naive"), "current", ReferenceGradients())


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
