"""A dataset zip unpacked safely into its job's folder, or refused whole with the reason.

A zip is a program's description of files, so every promise in it is checked before a byte is written:
the entry count (from the end record, before the directory is parsed), names (no absolute paths, no
``..``), kinds (no links or devices, no encrypted entries), sizes (a total bound, and a compression ratio
bound, which stops a decompression bomb: a gigabyte of zeros in a megabyte), file types (scans and index
files only) and, once written, each scan's declared size against the server's pixel limit. Entries are
written by this module's own loop, each path resolved and checked to stay inside the job's folder, each
entry's bytes counted against what it declared.

DICONDE/DICOM scans (``.dcm``) become 16-bit PNGs (TIFFs for float pixels) of the same stem in the same
folder, so a ``.dcm`` scan pairs with a mask of the same stem in any layout ``weldstream import`` reads
(``images/W1.dcm`` with ``masks/W1.png``, or ``W1.dcm`` with ``W1_mask.png``); an index CSV names PNG or
TIFF scans.
"""

from __future__ import annotations

import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from weldstream.console.scan_files import DICOM_MAGIC_AT, SUFFIXES, Oversized, checked_size, dicom_as_file, sniff
from weldstream.errors import InvalidInput

MAX_FILES = 20_000
MAX_RATIO = 200  # uncompressed : compressed, for entries above RATIO_FLOOR
RATIO_FLOOR = 1 << 20
INDEX_SUFFIXES = (".csv", ".json")
IGNORED = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")
CHUNK = 1 << 20
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"


class Refused(InvalidInput):
    """The whole upload is refused; the message names the entry and the rule."""

    def __init__(self, reason: str) -> None:
        super().__init__("zip", reason)


@dataclass(frozen=True)
class Limits:
    max_files: int = MAX_FILES
    max_unpacked_bytes: int = 16 << 30
    max_ratio: float = MAX_RATIO


@dataclass
class Intake:
    """What an accepted zip held: files written, images among them, entries left out with the reason."""

    files: int = 0
    images: int = 0  # scans and masks
    unpacked_bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: dict[str, str] = field(default_factory=dict)  # a DICOM scan's new path -> its path in the zip


def unpack(archive: Path, dest: Path, limits: Limits) -> Intake:
    """Check ``archive`` and write its scans and index files under ``dest`` (created, must be empty)."""
    count = declared_entries(archive)
    if count > limits.max_files:
        raise Refused(f"the zip holds {count} entries; at most {limits.max_files} are accepted")
    try:
        with zipfile.ZipFile(archive) as zf:
            entries, intake = _checked_entries(zf.infolist(), limits)
            dest.mkdir(parents=True, exist_ok=False)
            root = dest.resolve()
            for info, name in entries:
                _write(zf, info, name, root)
    except Refused:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, struct.error) as exc:
        raise Refused(f"is not a readable zip file ({exc})") from None
    for _info, name in entries:
        _check_image(root, name, intake)
    return intake


def _check_image(root: Path, name: str, intake: Intake) -> None:
    """Size a written image by what its bytes are (PIL would decode a JPEG named .png): refuse the zip for
    an oversized one, drop one that is no PNG, TIFF or DICOM at all, convert DICOM. A header that cannot be
    read is left to the pair check, which says why."""
    path = root / name
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return
    intake.images += 1
    content = sniff(_head(path))
    try:
        if kind == "dicom":
            intake.converted[dicom_as_file(path, name).relative_to(root).as_posix()] = name
        elif content is None:
            path.unlink()
            intake.skipped.append((name, f"is not a {kind.upper()} file: its bytes are no PNG, TIFF or DICOM"))
        else:
            checked_size(path, content, name)
    except Oversized as exc:
        raise Refused(str(exc)) from None
    except InvalidInput as exc:
        if kind == "dicom":
            intake.skipped.append((name, str(exc)))


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(DICOM_MAGIC_AT + 4)


def declared_entries(archive: Path) -> int:
    """How many entries the zip's end record declares, read before Python builds its directory."""
    size = archive.stat().st_size
    with archive.open("rb") as handle:
        tail_at = max(0, size - (1 << 16) - 22)
        handle.seek(tail_at)
        tail = handle.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) < at + 22:
            raise Refused("is not a zip file (no end of central directory record)")
        entries = struct.unpack("<H", tail[at + 10:at + 12])[0]
        locator = tail.rfind(_ZIP64_LOCATOR, 0, at)
        if entries == 0xFFFF and locator >= 0:
            record_at = struct.unpack("<Q", tail[locator + 8:locator + 16])[0]
            handle.seek(record_at)
            record = handle.read(56)
            if record[:4] != b"PK\x06\x06":
                raise Refused("is not a readable zip file (a broken zip64 end record)")
            entries = struct.unpack("<Q", record[32:40])[0]
    return entries


def _checked_entries(infos: list[zipfile.ZipInfo], limits: Limits) -> tuple[list[tuple[zipfile.ZipInfo, str]], Intake]:
    intake = Intake()
    entries: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    if len(infos) > limits.max_files:
        raise Refused(f"the zip holds {len(infos)} entries; at most {limits.max_files} are accepted")
    for info in infos:
        name = _safe_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise Refused(f"{info.filename!r} is a symbolic link; links are not accepted")
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a file
            raise Refused(f"{info.filename!r} is not a plain file (mode {stat.filemode(mode)})")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise Refused(f"{info.filename!r} is encrypted; send an unencrypted zip")
        if any(name.startswith(p) or PurePosixPath(name).name == p for p in IGNORED):
            intake.skipped.append((name, "operating-system metadata, not a scan"))
            continue
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in SUFFIXES and suffix not in INDEX_SUFFIXES:
            raise Refused(f"{info.filename!r} is not a scan or an index: only PNG, TIFF, DICOM (.dcm) images and "
                          "CSV/JSON index files are accepted")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > limits.max_ratio:
            raise Refused(f"{info.filename!r} unpacks {info.compress_size} bytes into {info.file_size} "
                          f"({ratio:.0f}:1, above {limits.max_ratio:.0f}:1): a decompression bomb")
        intake.unpacked_bytes += info.file_size
        if intake.unpacked_bytes > limits.max_unpacked_bytes:
            raise Refused(f"the zip unpacks to more than {limits.max_unpacked_bytes >> 20} MiB")
        if name.lower() in seen:
            raise Refused(f"{info.filename!r} appears twice in the zip")
        seen.add(name.lower())
        entries.append((info, name))
    intake.files = len(entries)
    return entries, intake


def _safe_name(raw: str) -> str:
    """The entry's relative POSIX path; absolute paths, drive letters and ``..`` are refused."""
    name = raw.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if "\x00" in name or name.startswith("/") or (parts and ":" in parts[0]):
        raise Refused(f"{raw!r} has an absolute path; entries must be relative to the zip")
    if ".." in parts:
        raise Refused(f"{raw!r} climbs out of the zip with '..'; entries must stay inside it")
    cleaned = [p for p in parts if p not in ("", ".")]
    if not cleaned:
        raise Refused(f"{raw!r} has no name")
    return "/".join(cleaned)


def _write(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, root: Path) -> None:
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        raise Refused(f"{info.filename!r} would be written outside the upload's folder")
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as source, target.open("xb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise Refused(f"{info.filename!r} holds more bytes than its header declares")
                out.write(chunk)
    except (OSError, NotImplementedError) as exc:
        raise Refused(f"{info.filename!r} cannot be unpacked ({exc})") from None
