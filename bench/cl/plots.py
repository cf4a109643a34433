"""The report's figures (matplotlib, Agg backend, PNG): forgetting curves, accuracy matrices, step times."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from weldstream.bench.cl.config import DEFAULT_STRATEGY  # noqa: E402


def plot_all(out: Path, summary: dict[str, dict[str, Any]], domains: list[str]) -> list[Path]:
    """Write every figure under ``out``; returns their paths."""
    done = {s: e for s, e in summary.items() if e.get("runs_ok")}
    paths = [old_domains_plot(out / "old_domains.png", done, domains), step_time_plot(out / "step_time.png", done)]
    paths += [heatmap(out / f"matrix_{s}.png", s, e["miou_matrix"], domains) for s, e in done.items()]
    return paths


def old_domains_plot(path: Path, summary: dict[str, dict[str, Any]], domains: list[str]) -> Path:
    """Mean mIoU over the domains trained before the current one, after each domain: flat = no forgetting."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    x = list(range(2, len(domains) + 1))
    for strategy, entry in summary.items():
        curve = entry["old_domains_curve"][1:]
        style = "--" if strategy in ("offline-joint", "joint-cumulative") else "-"
        width = 2.6 if strategy == DEFAULT_STRATEGY else 1.4
        ax.plot(x, curve, style, marker="o", linewidth=width, label=strategy)
    ax.set_xticks(x)
    ax.set_xlabel("domains seen")
    ax.set_ylabel("mean mIoU over earlier domains (points)")
    ax.set_title("How much of the earlier domains survives")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def heatmap(path: Path, strategy: str, matrix: list[list[float]], domains: list[str]) -> Path:
    """R[i][j] in points: rows = after training on domain i, columns = tested on domain j."""
    n = len(domains)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * n + 1.8))
    values = [[100 * v for v in row] for row in matrix]
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=max(1.0, max(max(r) for r in values)))
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{values[i][j]:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if values[i][j] < 0.6 * image.get_clim()[1] else "black")
    labels = [f"{k}: {d}" for k, d in enumerate(domains)]
    ax.set_xticks(range(n), [str(k) for k in range(n)])
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("tested on domain")
    ax.set_ylabel("after training on")
    ax.set_title(f"{strategy}: mIoU (points), mean over seeds")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def step_time_plot(path: Path, summary: dict[str, dict[str, Any]]) -> Path:
    """Stacked bars of the last domain's mean step: forward/backward, memory/projection, update."""
    names = list(summary)
    parts = [("forward_backward_ms", "forward/backward"), ("memory_ms", "memory/projection/penalty"),
             ("update_ms", "clip + optimizer step")]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    bottom = [0.0] * len(names)
    for key, label in parts:
        heights = [_nan0(summary[s]["last_domain_step_ms"][key][0]) for s in names]
        ax.bar(names, heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("ms per training step (last domain)")
    ax.set_title("Step time at the last domain, split by phase")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _nan0(value: float) -> float:
    return 0.0 if math.isnan(value) else value
