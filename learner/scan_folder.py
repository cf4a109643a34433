"""Labeled scans in a folder: which files pair up, and each pair read and checked as a LabeledScan.

Three layouts are found, in this order, anywhere under the root:

- an index CSV (``*.csv`` with ``image`` and ``mask`` columns, paths relative to the CSV; optional
  ``domain``, ``scan_id`` and ``rig_id`` columns), as ``weldstream simulate --out`` writes;
- ``images/`` beside ``masks/``, paired by file stem; the domain is the folder that holds both;
- GDXray-style series folders: ``W0001/W0001_0012.png`` with masks side by side
  (``W0001_0012_mask.png``, ``_gt`` or ``_label``) or in another series (``mask_series={"W0001": "W0002"}``
  pairs ``W0001_0012`` with ``W0002/W0002_0012``); the domain is the series folder.

Every pair becomes the LabeledScan the learner would receive and goes through the learner's own decoder
(``decode_record``), so a pair accepted here is a pair the learner accepts. Images travel as their
original PNG/TIFF bytes (lossless, compressed, bit depth kept); masks as raw uint8 class maps.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from google.protobuf.timestamp_pb2 import Timestamp
from PIL import Image

from weldstream.codec import array_to_tensor
from weldstream.errors import InvalidInput
from weldstream.learner.records import LabeledSample, decode_record
from weldstream.model import ModelConfig
from weldstream.v1 import stream_pb2, tensor_pb2

IMAGE_SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff"}
MASK_MARKS = ("_mask", "_gt", "_label")
_SERIES_NUMBER = re.compile(r"^(?P<series>.+?)_(?P<number>\d+)$")


@dataclass(frozen=True)
class Pair:
    """One image and its mask as found on disk (``mask`` None: no mask was found for the image)."""

    image: Path
    mask: Path | None
    domain: str
    scan_id: str
    rig_id: str = ""


@dataclass(frozen=True)
class FolderOptions:
    default_domain: str = ""  # for pairs whose layout names no domain
    rig_id: str = "import"
    binary_class: int = 0  # map a binary mask's non-zero pixels to this class (0: refuse binary masks)
    mask_series: dict[str, str] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    max_side: int = 4096


def find_pairs(root: Path, options: FolderOptions) -> Iterator[Pair]:
    """Every image under ``root`` with its mask (or None), once, in a stable order."""
    root = Path(root)
    claimed: set[Path] = set()
    for index in sorted(root.rglob("*.csv")):
        for pair in _index_pairs(index, options):
            claimed.update(p.resolve() for p in (pair.image, pair.mask) if p is not None)
            yield pair
    mask_names = {"masks", *options.mask_series.values()}
    mask_dirs = {p for p in root.rglob("*") if p.is_dir() and p.name in mask_names}
    for images_dir in sorted(p for p in root.rglob("images") if p.is_dir() and (p.parent / "masks").is_dir()):
        masks = {m.stem: m for m in _image_files(images_dir.parent / "masks")}
        for image in _image_files(images_dir):
            if image.resolve() in claimed:
                continue
            claimed.add(image.resolve())
            mask = masks.get(image.stem)
            if mask is not None:
                claimed.add(mask.resolve())
            yield Pair(image, mask, _domain_of(images_dir.parent, root, options), image.stem, options.rig_id)
    files = [p for p in _image_files(root, recursive=True)
             if p.resolve() not in claimed and not any(d in p.parents for d in mask_dirs)]
    for image in files:
        if any(image.stem.endswith(mark) for mark in MASK_MARKS):
            continue
        yield Pair(image, _mask_beside(image, options), _domain_of(image.parent, root, options), image.stem,
                   options.rig_id)


def read_pair(pair: Pair, options: FolderOptions) -> tuple[stream_pb2.LabeledScan, LabeledSample]:
    """The LabeledScan for a pair and what the learner's decoder makes of it; InvalidInput says what is wrong."""
    if not pair.domain:
        raise InvalidInput("domain", "is unknown: no domain column or folder names it; pass a default domain")
    if pair.mask is None:
        raise InvalidInput("mask", f"no mask found for {pair.image.name}")
    for path in (pair.image, pair.mask):
        if not path.is_file():
            raise InvalidInput("file", f"{path} does not exist")
    fmt = IMAGE_SUFFIXES.get(pair.image.suffix.lower())
    if fmt is None:
        raise InvalidInput("image.format", f"{pair.image.suffix} is not PNG or TIFF")
    mask = read_mask(pair.mask, options.binary_class)
    captured = Timestamp()
    captured.FromNanoseconds(int(pair.image.stat().st_mtime * 1e9))
    labeled = Timestamp()
    labeled.GetCurrentTime()
    message = stream_pb2.LabeledScan(
        scan_id=pair.scan_id, rig_id=pair.rig_id or options.rig_id, domain=pair.domain, captured_at=captured,
        labeled_at=labeled, labeled_by="import",
        image=tensor_pb2.Image(encoded=tensor_pb2.EncodedImage(data=pair.image.read_bytes(), format=fmt)),
        mask=array_to_tensor(mask),
    )
    sample = decode_record(message.SerializeToString(), len(options.model.classes), options.model.in_channels,
                           options.max_side)
    return message, sample


def read_mask(path: Path, binary_class: int) -> np.ndarray:
    """A class map from an 8-bit grey or palette PNG, or a TIFF; binary masks mapped if asked to."""
    data = path.read_bytes()
    try:
        if IMAGE_SUFFIXES.get(path.suffix.lower()) == "tiff":
            mask = tifffile.imread(io.BytesIO(data))
        else:
            with Image.open(io.BytesIO(data)) as img:
                if img.mode not in ("L", "P", "1", "I;16", "I"):
                    raise InvalidInput("mask.format", f"{img.mode} image; save class ids as 8-bit grey or palette")
                mask = np.asarray(img)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
        raise InvalidInput("mask.data", f"{path.name} is not a decodable mask ({exc})") from None
    if mask.ndim != 2:
        raise InvalidInput("mask.shape", f"must be H x W class ids, got {list(mask.shape)}")
    values = set(np.unique(mask).tolist())
    if mask.dtype == bool or (255 in values and values <= {0, 255}):  # a defect / no-defect mask
        if not binary_class:
            raise InvalidInput("mask.data", "is binary (defect or not); say which class its defects are "
                                            "(--binary-class)")
        return (mask != 0).astype(np.uint8) * np.uint8(binary_class)
    if any(v != int(v) or not 0 <= v <= 255 for v in values):
        raise InvalidInput("mask.data", "holds values that are not class ids")
    return mask.astype(np.uint8)


def _index_pairs(index: Path, options: FolderOptions) -> Iterator[Pair]:
    with index.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "mask"} <= set(reader.fieldnames):
            return
        for row in reader:
            image = index.parent / row["image"]
            mask = index.parent / row["mask"] if row.get("mask") else None
            yield Pair(image, mask, row.get("domain") or options.default_domain,
                       row.get("scan_id") or image.stem, row.get("rig_id") or options.rig_id)


def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _mask_beside(image: Path, options: FolderOptions) -> Path | None:
    for mark in MASK_MARKS:
        for candidate in image.parent.glob(f"{image.stem}{mark}.*"):
            if candidate.suffix.lower() in IMAGE_SUFFIXES:
                return candidate
    named = _SERIES_NUMBER.match(image.stem)
    series = options.mask_series.get(image.parent.name)
    if named and series:
        for candidate in sorted((image.parent.parent / series).glob(f"{series}_{named['number']}.*")):
            if candidate.suffix.lower() in IMAGE_SUFFIXES:
                return candidate
    return None


def _domain_of(folder: Path, root: Path, options: FolderOptions) -> str:
    relative = folder.relative_to(root).as_posix()
    return options.default_domain if relative in ("", ".") else relative
