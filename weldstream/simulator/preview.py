"""A picture of what the simulator makes: scans next to their masks, one row per domain.

Run `python -m weldstream.simulator.preview docs/samples/domains.png` to redraw the README figure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from weldstream.classes import DEFECT_CLASSES
from weldstream.simulator.domains import domain_names
from weldstream.simulator.scan import ScanSample, generate_scan

# RGB per class id, as weldstream.overlay draws predictions:
# crack red, porosity yellow, lack of fusion cyan, inclusion magenta.
CLASS_COLOURS = ((0, 0, 0), (230, 40, 40), (250, 210, 30), (40, 200, 230), (220, 60, 220))


def display_grey(image: np.ndarray) -> np.ndarray:
    """Any scan -> float 0..1, windowed on its 0.5 / 99.5 percentiles like the model's normalisation."""
    array = image.astype(np.float64)
    low, high = np.percentile(array, [0.5, 99.5])
    return np.clip((array - low) / max(high - low, 1e-12), 0, 1)


def overlay_rgb(sample: ScanSample, alpha: float = 0.5) -> np.ndarray:
    """H x W x 3 float: the scan in grey with flaw pixels tinted by class."""
    rgb = np.repeat(display_grey(sample.image)[..., None], 3, axis=2)
    palette = np.asarray(CLASS_COLOURS, np.float64) / 255
    flaw = sample.mask > 0
    rgb[flaw] = (1 - alpha) * rgb[flaw] + alpha * palette[sample.mask[flaw]]
    return rgb


def save_overlay_grid(path: Path | str, samples: list[ScanSample], per_row: int = 2) -> Path:
    """Write a PNG grid: each scan raw, then with its mask over it; a class legend underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not samples:
        raise ValueError("no samples to draw")
    rows = -(-len(samples) // per_row)
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(3.2 * 2 * per_row, 3.4 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, sample in enumerate(samples):
        left, right = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        left.imshow(display_grey(sample.image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        right.imshow(overlay_rgb(sample), interpolation="nearest")
        flaw_pct = 100 * float((sample.mask > 0).mean())
        left.set_title(f"{sample.domain}\nseed {sample.seed}, {sample.image.dtype}", fontsize=8)
        right.set_title(f"mask: {flaw_pct:.1f} % flaw pixels", fontsize=8)
    handles = [Patch(color=np.asarray(CLASS_COLOURS[c]) / 255, label=DEFECT_CLASSES[c])
               for c in range(1, len(DEFECT_CLASSES))]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (3.4 * rows + 0.6), 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, pil_kwargs={"optimize": True})
    plt.close(fig)
    return out


def domain_gallery(seeds: tuple[int, ...] = (17, 21), size: tuple[int, int] = (256, 256)) -> list[ScanSample]:
    """A few scans of every domain in canonical order: the README figure's content."""
    return [generate_scan(name, seed, size) for name in domain_names() for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = save_overlay_grid(args[0] if args else "docs/samples/domains.png", domain_gallery())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
