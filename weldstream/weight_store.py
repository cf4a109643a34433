"""Directory-backed store of model versions: integer versions, immutable once written, checksummed.

Layout: ``<root>/versions/<version:08d>/{weights.safetensors,manifest.json[,manifest.sig]}``. Weights are safetensors:
no pickle to trust, and a load takes milliseconds without holding the GIL long, so a server loading a
new version beside the live one does not stall its requests. A version is written into a
temporary directory, fsynced and renamed into place, so a reader never sees half a version and a crash
leaves at most a stray ``.tmp-*`` directory that is ignored. With a signing key, every version
written carries ``manifest.sig`` and every version read must carry a matching one (see signing.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from weldstream.errors import CorruptVersion
from weldstream.model import ModelConfig
from weldstream.signing import sign, verify

# Where every command keeps versions unless told otherwise (relative to its working directory).
DEFAULT_MODEL_DIR = Path("runs/models")
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
# An operator's pin: the version every server serves until it is removed, whatever is newer.
PIN_FILE = "pin.json"
SIGNATURE_FILE = "manifest.sig"
_VERSION_DIR = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class Manifest:
    """Everything known about one version besides its weights."""

    version: int
    parent_version: int
    sha256: str
    created_at: float
    model_config: dict[str, Any]
    classes: list[str]
    strategy: str = ""
    offsets: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    newest_label_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class StoredVersion:
    manifest: Manifest
    state_dict: dict[str, torch.Tensor]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.manifest.model_config)


class WeightStore:
    """Versions of one model in one directory; safe for one writer and many readers."""

    def __init__(self, root: Path | str, signing_key: bytes | None = None) -> None:
        self.root = Path(root)
        self._key = signing_key
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.versions_dir.iterdir() if _VERSION_DIR.match(p.name))

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def pinned(self) -> int | None:
        """The pinned version, or None when servers follow the newest version."""
        try:
            return int(json.loads((self.root / PIN_FILE).read_text())["version"])
        except FileNotFoundError:
            return None

    def served(self) -> int | None:
        """What every server should serve now: the pinned version, else the newest (None: no version yet)."""
        pinned = self.pinned()
        return pinned if pinned is not None else self.latest()

    def pin(self, version: int) -> None:
        """Hold every server on ``version`` (which must exist) until ``unpin()``; replaced atomically."""
        if not (self.path_of(version) / MANIFEST_FILE).exists():
            raise ValueError(f"version {version} is not in {self.versions_dir}")
        staging = self.root / f".{PIN_FILE}.tmp"
        _write_synced(staging, json.dumps({"version": version, "at": time.time()}).encode())
        os.rename(staging, self.root / PIN_FILE)
        _fsync_dir(self.root)

    def unpin(self) -> None:
        (self.root / PIN_FILE).unlink(missing_ok=True)
        _fsync_dir(self.root)

    def path_of(self, version: int) -> Path:
        return self.versions_dir / f"{version:08d}"

    def publish(self, state_dict: dict[str, torch.Tensor], model_config: ModelConfig, *, parent_version: int,
                version: int | None = None, **details: Any) -> Manifest:
        """Write a new immutable version (default: latest + 1) and return its manifest.

        Two writers (the learner and a consolidation job) may publish at once: without an explicit
        ``version``, the one that loses the rename race takes the next number; with one, it gets
        FileExistsError.
        """
        payload = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
        sha256 = hashlib.sha256(payload).hexdigest()
        while True:
            number = version if version is not None else (self.latest() or 0) + 1
            target = self.path_of(number)
            if target.exists():
                if version is None:
                    continue
                raise FileExistsError(f"version {number} already exists in {self.versions_dir}; "
                                      "versions are immutable")
            manifest = Manifest(version=number, parent_version=parent_version, sha256=sha256, created_at=time.time(),
                                model_config=model_config.to_dict(), classes=list(model_config.classes), **details)
            staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions_dir))
            try:
                _write_synced(staging / WEIGHTS_FILE, payload)
                text = manifest.to_json().encode()
                _write_synced(staging / MANIFEST_FILE, text)
                if self._key is not None:
                    _write_synced(staging / SIGNATURE_FILE, sign(text, self._key).encode())
                staging.chmod(0o755)  # mkdtemp makes 0700; servers may run as another user
                os.rename(staging, target)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                if target.exists():
                    if version is None:
                        continue  # another writer took this number first
                    raise FileExistsError(f"version {number} was published by another writer meanwhile") from exc
                raise
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _fsync_dir(self.versions_dir)
            return manifest

    def manifest(self, version: int) -> Manifest:
        """A version's manifest; a missing file raises FileNotFoundError, an unreadable one CorruptVersion."""
        data = (self.path_of(version) / MANIFEST_FILE).read_bytes()
        if self._key is not None:
            self._check_signature(version, data)
        try:
            return Manifest.from_json(data.decode(errors="replace"))
        except (ValueError, TypeError) as exc:
            raise CorruptVersion(f"version {version}: unreadable manifest ({exc})") from None

    def _check_signature(self, version: int, manifest: bytes) -> None:
        path = self.path_of(version) / SIGNATURE_FILE
        if not path.exists():
            raise CorruptVersion(f"version {version} is unsigned; this store requires signed versions")
        if not verify(manifest, path.read_text(errors="replace"), self._key):
            raise CorruptVersion(f"version {version}: its signature does not match (another key, or an altered "
                                 "manifest)")

    def load(self, version: int, map_location: str | torch.device = "cpu") -> StoredVersion:
        """Read a version and verify its checksum; damage raises CorruptVersion, a missing file OSError."""
        manifest = self.manifest(version)
        payload = (self.path_of(version) / WEIGHTS_FILE).read_bytes()
        digest = hashlib.sha256(payload).hexdigest()
        if digest != manifest.sha256:
            raise CorruptVersion(
                f"version {version}: weights sha256 {digest[:12]}… does not match manifest {manifest.sha256[:12]}…"
            )
        try:
            ModelConfig.from_dict(manifest.model_config)  # a model this code can build
            tensors = safetensors.torch.load(payload)
        except Exception as exc:  # noqa: BLE001 - checksummed yet unreadable: damaged at the source
            raise CorruptVersion(f"version {version}: unreadable weights or model config ({exc})") from None
        state = {k: v.to(map_location) for k, v in tensors.items()}
        return StoredVersion(manifest, state)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
