"""One scan from a domain and a seed: lay out the weld, sample flaws, render, round to the rig's dtype."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from weldstream.simulator import radiograph, ultrasonic
from weldstream.simulator.defects import sample_defects
from weldstream.simulator.domains import Domain, get_domain

MIN_SIDE = 32  # below this the dead zone, back wall and cap no longer fit


@dataclass(frozen=True, eq=False)
class ScanSample:
    """A scan and its label: image H x W in the domain's dtype, mask H x W uint8 class ids."""

    image: np.ndarray
    mask: np.ndarray
    domain: str
    seed: int
    scan_id: str
    modality: str


def scan_id(domain: str, seed: int) -> str:
    return f"{domain}-{seed:08d}"


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(side) != side or side < MIN_SIDE for side in size):
        raise ValueError(f"size must be two integers >= {MIN_SIDE} (rows, cols), got {size!r}")
    return int(size[0]), int(size[1])


def render_scan(domain: str | Domain, seed: int, size: tuple[int, int] = (128, 128), *,
                with_defects: bool = True) -> ScanSample:
    """generate_scan with a switch to leave the flaws out of the image (the mask is still returned).

    Background and flaws draw from separate generators, so with_defects=False renders exactly the scan
    the flaws were painted into; tests use that to check the mask covers what changed.
    """
    spec = get_domain(domain)
    shape = _check_size(size)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    # The domain name is part of the entropy so seed 7 of two domains are unrelated scans.
    root = np.random.default_rng([int(seed), zlib.crc32(spec.name.encode())])
    background_rng, flaw_rng = root.spawn(2)
    renderer = ultrasonic if spec.modality == "ultrasonic" else radiograph
    scene = renderer.layout(spec, shape, background_rng)
    tungsten = getattr(spec.rig, "tungsten_fraction", 0.0)
    defects = sample_defects(scene.zone, shape, spec.defect_mix, spec.defect_free_fraction,
                             spec.mean_extra_defects, spec.max_defects, spec.flaw_scale, tungsten, flaw_rng)
    signal = renderer.render(spec, scene, defects if with_defects else [], background_rng)

    mask = np.zeros(shape, np.uint8)
    for defect in defects:  # later flaws win, as they do in the image
        mask[defect.footprint] = defect.class_id
    if spec.dtype == "float32":
        image = signal.astype(np.float32)
    else:
        image = np.rint(signal).astype(spec.dtype)
    return ScanSample(image, mask, spec.name, int(seed), scan_id(spec.name, int(seed)), spec.modality)


def generate_scan(domain: str | Domain, seed: int, size: tuple[int, int] = (128, 128)) -> ScanSample:
    """The scan `seed` of `domain`: byte-identical for the same domain, seed and size.

    size is (rows, cols); the rig keeps its field of view height, so more rows means a finer pitch.
    An unknown domain name raises ValueError listing the valid ones.
    """
    return render_scan(domain, seed, size)
