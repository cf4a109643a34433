"""Scan files people hand the console: PNG, TIFF or DICONDE/DICOM, sized from their headers first.

A file declaring more than the server's MAX_SCAN_SIDE pixels a side, or more than one image, is refused
before a pixel is decoded, so a small file that would inflate to gigabytes (a decompression bomb) costs
nothing. DICOM pixels get their rescale slope and intercept; integers that fit 16 unsigned bits stay
integers (a 16-bit PNG when a dataset is unpacked), anything else becomes float32 (a TIFF).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import tifffile

from weldstream.codec import PNG_MAGIC, TIFF_MAGICS, check_scan, decode_file, encode_png, encode_tiff
from weldstream.errors import InvalidInput
from weldstream.limits import MAX_SCAN_SIDE

DICOM_MAGIC_AT = 128
SUFFIXES = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".dcm": "dicom", ".dicom": "dicom"}
NAMES = "PNG, TIFF or DICONDE/DICOM"
MAX_SAMPLES = 4  # grey, grey + alpha, RGB, RGBA

Source = bytes | Path


class Oversized(InvalidInput):
    """A header that reads well and declares more than one scan may hold: refused, never decoded."""


class _NotAScan(ValueError):
    """A header that reads well but declares something that is not one 2-D scan."""


def sniff(head: bytes) -> str | None:
    """'png', 'tiff' or 'dicom' from a file's first 132 bytes; None for anything else."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head[:4] in TIFF_MAGICS:
        return "tiff"
    if head[DICOM_MAGIC_AT:DICOM_MAGIC_AT + 4] == b"DICM":
        return "dicom"
    return None


def checked_size(source: Source, kind: str, field: str, max_side: int = MAX_SCAN_SIDE) -> tuple[int, int]:
    """(height, width) as the header declares it; Oversized if a side exceeds ``max_side`` or the file holds
    more than one image, InvalidInput if the header cannot be read. Nothing is decoded."""
    try:
        height, width = {"png": _png_size, "tiff": _tiff_size, "dicom": _dicom_size}[kind](source)
    except _NotAScan as exc:
        raise Oversized(field, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the file's fault
        raise InvalidInput(field, f"has no readable {kind.upper()} header ({exc})") from None
    if height > max_side or width > max_side:
        raise Oversized(field, f"is {width} x {height} px; scans may be at most {max_side} x {max_side} px")
    if height <= 0 or width <= 0:
        raise InvalidInput(field, f"declares an empty image ({width} x {height} px)")
    return height, width


def read_scan(data: bytes, field: str = "file") -> np.ndarray:
    """An uploaded file's scan, checked as the server checks one (size, finite values)."""
    kind = sniff(data[:DICOM_MAGIC_AT + 4])
    if kind is None:
        raise InvalidInput(field, f"is not a {NAMES} file")
    checked_size(data, kind, field)
    scan = decode_dicom(data, field) if kind == "dicom" else decode_file(data, kind, field)
    return check_scan(scan, field, MAX_SCAN_SIDE)


def decode_dicom(source: Source, field: str) -> np.ndarray:
    """The pixels of a one-frame, one-channel DICOM file with its modality rescale applied."""
    import pydicom

    try:
        ds = pydicom.dcmread(_open(source), force=False)
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - a file pydicom cannot read is the caller's bad bytes
        raise InvalidInput(field, f"its DICOM pixels cannot be decoded ({type(exc).__name__}: {exc})") from None
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        pixels = pixels.astype(np.float64) * slope + intercept
    return _scan_dtype(np.asarray(pixels))


def dicom_as_file(path: Path, field: str) -> Path:
    """Write a DICOM scan beside itself as a 16-bit PNG (a TIFF for float pixels) of the same stem, so
    it pairs with its mask as any PNG does; the DICOM file is removed. Returns the new path."""
    checked_size(path, "dicom", field)
    scan = decode_dicom(path, field)
    data, suffix = (encode_tiff(scan), ".tiff") if scan.dtype == np.float32 else (encode_png(scan), ".png")
    target = path.with_suffix(suffix)
    if target.exists() or target.with_suffix(".tif").exists():
        raise InvalidInput(field, f"{path.name} and {target.name} would both be the scan {path.stem!r}")
    target.write_bytes(data)
    path.unlink()
    return target


def _scan_dtype(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype in (np.uint8, np.uint16):
        return pixels
    if pixels.dtype.kind in "iub" and pixels.size and 0 <= pixels.min() and pixels.max() <= 65535:
        return pixels.astype(np.uint16)
    return pixels.astype(np.float32)


def _open(source: Source):
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _head(source: Source, n: int) -> bytes:
    if isinstance(source, bytes):
        return source[:n]
    with open(source, "rb") as handle:
        return handle.read(n)


def _png_size(source: Source) -> tuple[int, int]:
    head = _head(source, 24)
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise ValueError("its first chunk is not IHDR")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def _tiff_size(source: Source) -> tuple[int, int]:
    with tifffile.TiffFile(_open(source)) as tif:
        pages = len(tif.pages)
        page = tif.pages.first
        if pages != 1 or page.imagedepth != 1:
            raise _NotAScan(f"holds {pages} pages of depth {page.imagedepth}; one scan is one 2-D image")
        if page.samplesperpixel > MAX_SAMPLES:
            raise _NotAScan(f"has {page.samplesperpixel} samples a pixel; a scan has at most {MAX_SAMPLES}")
        return int(page.imagelength), int(page.imagewidth)


def _dicom_size(source: Source) -> tuple[int, int]:
    import pydicom

    ds = pydicom.dcmread(_open(source), stop_before_pixels=True, force=False)
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("it is a DICOM file without an image (no Rows/Columns)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames != 1 or samples != 1:
        raise _NotAScan(f"holds {frames} frames of {samples} samples a pixel; one scan is one grey frame")
    return int(ds.Rows), int(ds.Columns)

