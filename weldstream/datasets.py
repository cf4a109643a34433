"""Labeled scans kept in an S3-compatible bucket: a checked copy that consolidation and benchmarks read back.

Layout under ``s3://bucket/prefix/``: ``images/<scan id><suffix>`` (the original PNG or TIFF bytes),
``masks/<scan id>.png`` (the checked class map as an 8-bit PNG) and ``index.csv`` with one row a pair
(image, mask, domain, scan_id, rig_id, the image's dtype and the sha256 of each file). The index is written last, so a
reader sees the pairs of a finished upload only. A fetched copy is an ordinary folder in the index-CSV
layout every folder reader takes (``weldstream import``, ``consolidate --data``, ``bench cl --data``); each
file is checked against its sha256 on the way down and kept, so a second fetch downloads nothing new.
"""

from __future__ import annotations

import csv
import hashlib
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weldstream.codec import decode_file, encode_png

INDEX = "index.csv"
COLUMNS = ("image", "mask", "domain", "scan_id", "rig_id", "dtype", "image_sha256", "mask_sha256")
FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}


class DamagedDataset(ValueError):
    """A file of a dataset in the bucket does not match the sha256 its index recorded."""


def is_remote(location: str | Path) -> bool:
    return str(location).startswith("s3://") or str(location).startswith("s3:/")


def _url(location: str | Path) -> str:
    text = str(location)
    return text if text.startswith("s3://") else "s3://" + text.removeprefix("s3:/")


@dataclass
class DatasetWriter:
    """Pairs written one by one under a dataset prefix; ``close()`` writes the index and makes them visible."""

    url: str
    rows: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from weldstream.s3_client import S3Bucket, S3Location

        self.bucket = S3Bucket(S3Location.parse(_url(self.url)))

    def add(self, scan_id: str, domain: str, rig_id: str, image: bytes, image_suffix: str, mask: np.ndarray) -> None:
        """One checked pair: the image as it came, the mask as the class map the importer read."""
        mask_png = encode_png(np.ascontiguousarray(mask, dtype=np.uint8))
        dtype = str(decode_file(image, FORMATS[image_suffix.lower()], "image").dtype)
        image_name, mask_name = f"images/{scan_id}{image_suffix}", f"masks/{scan_id}.png"
        self.bucket.put(image_name, image)
        self.bucket.put(mask_name, mask_png)
        self.rows.append({"image": image_name, "mask": mask_name, "domain": domain, "scan_id": scan_id,
                          "rig_id": rig_id, "dtype": dtype, "image_sha256": _sha256(image),
                          "mask_sha256": _sha256(mask_png)})

    def close(self) -> int:
        """Write the index (last); returns how many pairs it lists."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        self.bucket.put(INDEX, text.getvalue().encode())
        return len(self.rows)


def fetch_dataset(location: str | Path, cache_dir: Path | None = None) -> Path:
    """A local folder holding the dataset at ``s3://…`` (downloaded and checked where not already cached)."""
    from weldstream.s3_client import S3Bucket, S3Location

    where = S3Location.parse(_url(location))
    bucket = S3Bucket(where)
    folder = Path(cache_dir) if cache_dir is not None else default_cache(where.bucket, where.prefix)
    rows = list(csv.DictReader(io.StringIO(bucket.read(INDEX).decode())))
    for row in rows:
        for column in ("image", "mask"):
            _fetch_checked(bucket, row[column], row[f"{column}_sha256"], folder)
    local_index = folder / INDEX
    staging = folder / f".{INDEX}.tmp"
    with staging.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    staging.replace(local_index)
    return folder


def local_folder(location: str | Path, cache_dir: Path | None = None) -> Path:
    """A folder of labeled scans: the path itself, or the fetched copy of a dataset in a bucket."""
    return fetch_dataset(location, cache_dir) if is_remote(location) else Path(location)


def default_cache(bucket: str, prefix: str) -> Path:
    return Path(tempfile.gettempdir()) / "weldstream-datasets" / bucket / prefix.replace("/", "_")


def _fetch_checked(bucket, name: str, sha256: str, folder: Path) -> None:
    path = folder / name
    if path.is_file() and _sha256(path.read_bytes()) == sha256:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    bucket.download(name, staging)
    if _sha256(staging.read_bytes()) != sha256:
        staging.unlink(missing_ok=True)
        raise DamagedDataset(f"{bucket.location.url(name)} does not match the sha256 its index recorded")
    staging.replace(path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
