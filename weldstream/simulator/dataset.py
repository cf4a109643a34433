"""Scans on disk: images and masks as lossless files plus an index (CSV and JSON) that reads back exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from weldstream.classes import DEFECT_CLASSES
from weldstream.simulator.domains import get_domain
from weldstream.simulator.scan import generate_scan

PIXEL_COLUMNS = [f"pixels_{name}" for name in DEFECT_CLASSES]
COLUMNS = ["scan_id", "domain", "modality", "image", "mask", "height", "width", "dtype", "seed",
           *PIXEL_COLUMNS]
_INTEGER_COLUMNS = {"height", "width", "seed", *PIXEL_COLUMNS}


def _write_image(path: Path, image: np.ndarray) -> None:
    """uint8 -> 8-bit PNG, uint16 -> 16-bit PNG, float32 -> TIFF: all lossless."""
    if image.dtype == np.float32:
        tifffile.imwrite(path, image)
    else:
        Image.fromarray(image).save(path)


def _read_image(path: Path, dtype: str) -> np.ndarray:
    if path.suffix == ".tiff":
        image = tifffile.imread(path)
    else:
        with Image.open(path) as handle:
            image = np.asarray(handle)
    if image.dtype != np.dtype(dtype):
        if not np.can_cast(image.dtype, dtype) and image.max(initial=0) > np.iinfo(dtype).max:
            raise ValueError(f"{path} holds {image.dtype} values that do not fit {dtype}")
        image = image.astype(dtype)
    return image


def write_dataset(out_dir: Path | str, domain: str, count: int, seed: int = 0,
                  size: tuple[int, int] = (128, 128)) -> Path:
    """Write `count` scans of `domain` (scan i has seed `seed + i`) under out_dir; return index.csv's path.

    Layout: images/<scan_id>.png (or .tiff for float32), masks/<scan_id>.png, index.csv, index.json.
    Seeds are consecutive so a later call with seed=seed+count continues the same stream.
    """
    spec = get_domain(domain)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    suffix = ".tiff" if spec.dtype == "float32" else ".png"
    rows: list[dict[str, Any]] = []
    for i in range(count):
        sample = generate_scan(spec, seed + i, size)
        image_rel = f"images/{sample.scan_id}{suffix}"
        mask_rel = f"masks/{sample.scan_id}.png"
        _write_image(out / image_rel, sample.image)
        Image.fromarray(sample.mask).save(out / mask_rel)
        counts = np.bincount(sample.mask.ravel(), minlength=len(DEFECT_CLASSES))
        rows.append({
            "scan_id": sample.scan_id, "domain": spec.name, "modality": spec.modality,
            "image": image_rel, "mask": mask_rel, "height": sample.image.shape[0],
            "width": sample.image.shape[1], "dtype": spec.dtype, "seed": sample.seed,
            **{column: int(n) for column, n in zip(PIXEL_COLUMNS, counts, strict=True)},
        })
    index = out / "index.csv"
    with index.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "index.json").write_text(json.dumps(rows, indent=1) + "\n")
    return index


def read_index(index_path: Path | str) -> list[dict[str, Any]]:
    """index.csv or index.json -> its rows, with the same types either way (counts and sizes as int)."""
    index = Path(index_path)
    if index.suffix == ".json":
        return json.loads(index.read_text())
    with index.open(newline="") as handle:
        return [{key: int(value) if key in _INTEGER_COLUMNS else value for key, value in row.items()}
                for row in csv.DictReader(handle)]


def read_dataset(index_path: Path | str) -> list[tuple[dict[str, Any], np.ndarray, np.ndarray]]:
    """index.csv or index.json -> [(row, image in its declared dtype, mask uint8)], in index order."""
    index = Path(index_path)
    samples = []
    for row in read_index(index):
        image = _read_image(index.parent / row["image"], row["dtype"])
        mask = _read_image(index.parent / row["mask"], "uint8")
        samples.append((row, image, mask))
    return samples
