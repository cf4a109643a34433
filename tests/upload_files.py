"""Files people upload to the console, good and hostile: scans in PNG, TIFF and DICOM, a dataset with broken
pairs, and zips that must be refused (climbing paths, links, too many entries, a decompression bomb)."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from weldstream.simulator.dataset import write_dataset


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray, slope: float | None = None, intercept: float | None = None) -> bytes:
    """A one-frame 16-bit MONOCHROME2 DICOM file (explicit VR little endian) holding ``pixels``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def wide_png(width: int = 100_000, height: int = 64) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels and holds none: nothing is allocated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def zip_of(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def zip_folder(path: Path, folder: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
    return path


def symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("scans/images/a.png", png_bytes(np.zeros((8, 8), np.uint8)))
        link = zipfile.ZipInfo("scans/images/b.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return path


def many_files_zip(path: Path, count: int = 50_000) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"s/{i}.png", b"")
    return path


def bomb_zip(path: Path, gib: int = 1, name: str = "scans/images/bomb.png") -> Path:
    """One entry of ``gib`` GiB of zeros deflated to about a megabyte per GiB, written block by block (the
    same flushed deflate block repeated, then a final empty one) so building it costs no memory and no
    gigabyte of compression."""
    mib = bytes(1 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflater.compress(mib) + deflater.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    count = 1024 * gib
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(mib, crc)
    size, packed = count << 20, len(block) * count + len(end)
    encoded = name.encode()
    common = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, packed, size)
    with path.open("wb") as out:
        out.write(b"PK\x03\x04" + common + struct.pack("<HH", len(encoded), 0) + encoded)
        for _ in range(count):
            out.write(block)
        out.write(end)
        directory_at = out.tell()
        directory = (b"PK\x01\x02" + struct.pack("<H", (3 << 8) | 20) + common
                     + struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0o100644 << 16, 0) + encoded)
        out.write(directory)
        out.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(directory), directory_at, 0))
    return path


def many_small_bombs_zip(path: Path, count: int, mib: int = 1) -> Path:
    """``count`` entries of ``mib`` MiB of zeros each: every entry below the ratio check's floor, the sum above
    the unpacked bound."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zeros = bytes(mib << 20)
        for i in range(count):
            zf.writestr(f"scans/images/z{i}.png", zeros)
    return path


def broken_dataset(root: Path) -> tuple[set[str], dict[str, str]]:
    """Four layouts with good and broken pairs; returns the scan ids that should get through and, for each
    broken pair's image (relative to ``root``), the start of the reason it is skipped with."""
    # An index CSV with a domain column: one mask missing, one image that is not an image.
    write_dataset(root / "site-a", "ut-pe100-5mhz", 4, seed=0, size=(64, 64))
    ut = sorted((root / "site-a" / "images").iterdir())
    (root / "site-a" / "masks" / f"{ut[0].stem}.png").unlink()
    ut[1].write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of the sort")
    # images/ beside masks/, no index: the folder is the domain. One mask of the wrong size, one JPEG named .png.
    write_dataset(root / "rig-7", "xray-film-steel-x52", 3, seed=10, size=(64, 64))
    for index in ("index.csv", "index.json"):
        (root / "rig-7" / index).unlink()
    xray = sorted((root / "rig-7" / "masks").iterdir())
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(xray[0])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "rig-7" / "images" / "jpeg.png", format="JPEG")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "rig-7" / "masks" / "jpeg.png")
    # DICOM scans beside their masks: d1 pairs with masks/d1.png, d2 has no mask.
    (root / "dicom" / "images").mkdir(parents=True)
    (root / "dicom" / "masks").mkdir()
    for n in (1, 2):
        (root / "dicom" / "images" / f"d{n}.dcm").write_bytes(dicom_bytes(dicom_pixels(n)))
    mask = np.zeros((48, 40), np.uint8)
    mask[10:20, 5:25] = 2
    Image.fromarray(mask).save(root / "dicom" / "masks" / "d1.png")
    # An index naming a file outside the upload.
    (root / "sneaky").mkdir()
    (root / "sneaky" / "index.csv").write_text("image,mask,domain\n/etc/passwd,/etc/passwd,sneaky\n")
    good = {ut[2].stem, ut[3].stem, *(m.stem for m in xray[1:]), "d1"}
    broken = {f"site-a/images/{ut[0].name}": f"file: site-a/masks/{ut[0].stem}.png does not exist",
              f"site-a/images/{ut[1].name}": "image.encoded.data: is not",
              f"rig-7/images/{xray[0].name}": "mask.shape: [32, 64] does not match",
              "rig-7/images/jpeg.png": "is not a PNG file: its bytes are no PNG, TIFF or DICOM",
              "dicom/images/d2.dcm": "mask: no mask found for d2.png",
              "/etc/passwd": "file: /etc/passwd is outside the upload"}
    return good, broken


def dicom_pixels(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((48, 40)) * 60000).astype(np.uint16)
