"""The weight store in an S3-compatible bucket: the directory store's interface, objects first, pointer last.

Under ``s3://bucket/prefix``: ``blobs/<uuid>/`` holds one upload (weights.safetensors, manifest-<N>.json and,
with a key, manifest-<N>.sig); ``versions/<N:08d>.json``, the pointer, names them and their sha256: version N
exists once it exists; ``head.json`` ({"latest": N, "pinned": P or null}) is what followers poll.

Publishing uploads the weights, checks their size, writes the manifest (it carries the number, and is what the
signature covers), and only then the pointer, with If-None-Match: of two writers after one number, the one that
gets 412 writes its manifest again for the next number (or raises FileExistsError for an explicit one). Readers
read pointers only, so what a cut upload left behind is never seen. head.json is advisory: publish, pin and
unpin update it by compare-and-swap, never lowering ``latest``; followers read it with If-None-Match. Where it
is missing, latest() lists the pointers; where a writer died between pointer and head, the head lags until the
next publish. Loaded versions are kept in a small local cache whose entries are directory stores, so every load
is verified by the directory store's own code (and against the pointer's sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from weldstream.errors import CorruptVersion
from weldstream.model import ModelConfig
from weldstream.s3_client import PreconditionFailed, S3Bucket, S3Location, SharedJson, StoreUnavailable
from weldstream.signing import sign, verify
from weldstream.weight_store import MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE, Manifest, StoredVersion, WeightStore

__all__ = ["ObjectWeightStore", "StoreUnavailable", "default_cache_dir"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pointer:
    """What versions/<N>.json holds: where version N's objects are, and what its weights hash to."""

    version: int
    signature: str | None  # None: an unsigned version
    weights: str
    manifest: str
    sha256: str
    size: int

    @property
    def upload(self) -> str:
        return self.weights.rsplit("/", 2)[-2]  # the upload's uuid


DEFAULT_CACHE_VERSIONS = 4
HEAD = "head.json"
POINTERS = "versions/"
_POINTER = re.compile(r"^versions/(\d{8})\.json$")


class ObjectWeightStore:
    """Versions of one model under one bucket prefix; any number of writers and readers, on any hosts."""

    def __init__(self, url: str, signing_key: bytes | None = None, cache_dir: Path | None = None,
                 cache_versions: int = DEFAULT_CACHE_VERSIONS) -> None:
        location = S3Location.parse(url)
        self.bucket = S3Bucket(location)
        self.root = location.url()
        self.versions_dir = location.url(POINTERS)
        self._key = signing_key
        self._cache = VersionCache(cache_dir or default_cache_dir(location), cache_versions)
        self._head = SharedJson(self.bucket, HEAD)

    def versions(self) -> list[int]:
        """Every published version (a LIST of the pointers: for operators and registry sync, not for polling)."""
        return sorted(int(m.group(1)) for name in self.bucket.names(POINTERS) if (m := _POINTER.match(name)))

    def latest(self) -> int | None:
        return self._latest(self._head.read()[0])

    def pinned(self) -> int | None:
        """The pinned version, or None when servers follow the newest version."""
        head = self._head.read()[0]
        return None if head is None or head.get("pinned") is None else int(head["pinned"])

    def served(self) -> int | None:
        """What every server should serve now: the pinned version, else the newest; one conditional GET."""
        head = self._head.read()[0]
        pinned = None if head is None else head.get("pinned")
        return int(pinned) if pinned is not None else self._latest(head)

    def pin(self, version: int) -> None:
        """Hold every server on ``version`` (which must exist) until ``unpin()``."""
        if self.bucket.size(_pointer_name(version)) is None:
            raise ValueError(f"version {version} is not in {self.versions_dir}")
        self._head.update(lambda head: {**head, "pinned": version}, self._fresh_head)

    def unpin(self) -> None:
        self._head.update(lambda head: {**head, "pinned": None}, self._fresh_head)

    def publish(self, state_dict: dict[str, torch.Tensor], model_config: ModelConfig, *, parent_version: int,
                version: int | None = None, **details: Any) -> Manifest:
        """Write a new immutable version (default: latest + 1) and return its manifest.

        Without an explicit ``version``, a writer that loses the race for a number takes the next one; with
        one, it gets FileExistsError. A failure before the pointer is written leaves only unseen objects.
        """
        if version is not None and self.bucket.size(_pointer_name(version)) is not None:
            raise FileExistsError(f"version {version} already exists in {self.versions_dir}; versions are immutable")
        payload = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
        upload = f"blobs/{uuid.uuid4().hex}/"
        weights = upload + WEIGHTS_FILE
        self.bucket.put(weights, payload)
        if (stored := self.bucket.size(weights)) != len(payload):
            raise StoreUnavailable(f"{self.bucket.location.url(weights)} holds {stored} bytes after an upload of "
                                   f"{len(payload)}; nothing was published")
        sha256 = hashlib.sha256(payload).hexdigest()
        number = version if version is not None else (self.latest() or 0) + 1
        while True:
            manifest = Manifest(version=number, parent_version=parent_version, sha256=sha256, created_at=time.time(),
                                model_config=model_config.to_dict(), classes=list(model_config.classes), **details)
            pointer = self._put_manifest(manifest, upload, len(payload))
            try:
                self.bucket.put(_pointer_name(number), json.dumps(asdict(pointer)).encode(), if_none_match=True)
            except PreconditionFailed:
                self.bucket.discard([pointer.manifest, *([pointer.signature] if pointer.signature else [])])
                if version is None:
                    number += 1  # another writer took this number first
                    continue
                self.bucket.discard([weights])
                raise FileExistsError(f"version {number} was published by another writer meanwhile") from None
            break
        try:
            self._head.update(lambda head: {**head, "latest": max(head.get("latest") or 0, number)}, self._fresh_head)
        except StoreUnavailable as exc:  # published all the same: the next publish repairs the head
            log.warning("version %d is published in %s but its head was not updated: %s", number, self.root, exc)
        return manifest

    def manifest(self, version: int) -> Manifest:
        """A version's manifest: FileNotFoundError when there is no such version, CorruptVersion when it is
        unreadable or (with a key) unsigned or signed with another key."""
        pointer = self._pointer(version)
        text = self.bucket.read(pointer.manifest)
        if self._key is not None:
            if pointer.signature is None:
                raise CorruptVersion(f"version {version} in {self.root} is unsigned; this store accepts signed "
                                     "versions only")
            if not verify(text, self.bucket.read(pointer.signature).decode(errors="replace"), self._key):
                raise CorruptVersion(f"version {version} in {self.root}: the signature does not match (another "
                                     "key, or an altered manifest)")
        try:
            manifest = Manifest.from_json(text.decode(errors="replace"))
        except (ValueError, TypeError) as exc:
            raise CorruptVersion(f"version {version} in {self.root}: unreadable manifest ({exc})") from None
        return _checked(manifest, pointer)

    def load(self, version: int, map_location: str | torch.device = "cpu") -> StoredVersion:
        """A version's weights, verified (sha256; the signature with a key) on every load, cached or not.

        Damage in the bucket (a flipped byte, another manifest) raises CorruptVersion; a missing object
        FileNotFoundError. A damaged cached copy is dropped and downloaded again.
        """
        pointer = self._pointer(version)
        entry = self._cache.path(version, pointer.upload)
        if entry.is_dir():
            try:
                stored = self._verified(entry, pointer, map_location)
                _touch(entry)  # recently used: evicted last
                return stored
            except (CorruptVersion, OSError) as exc:
                log.warning("cached copy of version %d (%s) is damaged, downloading it again: %s", version, entry, exc)
                self._cache.drop(entry)
        staging = self._cache.staging()
        try:
            folder = WeightStore(staging).path_of(version)
            folder.mkdir()
            self.bucket.download(pointer.weights, folder / WEIGHTS_FILE)
            self.bucket.download(pointer.manifest, folder / MANIFEST_FILE)
            if pointer.signature is not None:
                self.bucket.download(pointer.signature, folder / SIGNATURE_FILE)
            stored = self._verified(staging, pointer, map_location)
            self._cache.keep(staging, entry)
            return stored
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _verified(self, entry: Path, pointer: Pointer, map_location: str | torch.device) -> StoredVersion:
        stored = WeightStore(entry, self._key).load(pointer.version, map_location)
        _checked(stored.manifest, pointer)
        return stored

    def _put_manifest(self, manifest: Manifest, upload: str, size: int) -> Pointer:
        text = manifest.to_json().encode()
        name, signature = (upload + _numbered(file, manifest.version) for file in (MANIFEST_FILE, SIGNATURE_FILE))
        self.bucket.put(name, text)
        if self._key is not None:
            self.bucket.put(signature, sign(text, self._key).encode())
        return Pointer(manifest.version, signature if self._key else None, upload + WEIGHTS_FILE, name,
                       manifest.sha256, size)

    def _pointer(self, version: int) -> Pointer:
        got = self.bucket.get(_pointer_name(version))
        if got is None:
            raise FileNotFoundError(f"version {version} is not in {self.versions_dir}")
        try:
            pointer = Pointer(**json.loads(got[0] or b""))
        except (ValueError, TypeError) as exc:
            raise CorruptVersion(f"version {version} in {self.root}: unreadable pointer ({exc})") from None
        if pointer.version != version:
            raise CorruptVersion(f"the pointer of version {version} in {self.root} names version {pointer.version}")
        return pointer

    def _fresh_head(self) -> dict[str, Any]:
        """head.json where there is none (a fresh bucket, or one lost): the newest pointer, no pin."""
        return {"latest": self._latest(None), "pinned": None}

    def _latest(self, head: dict[str, Any] | None) -> int | None:
        """The head's latest; without a head, the newest pointer listed."""
        if head is not None and head.get("latest") is not None:
            return int(head["latest"])
        versions = self.versions()
        return versions[-1] if versions else None


class VersionCache:
    """Downloaded versions on local disk, each entry a one-version directory store; at most ``size`` entries,
    the least recently loaded evicted first. Entries are named by version and upload, so a bucket emptied and
    filled again never serves an old copy."""

    def __init__(self, root: Path, size: int) -> None:
        if size < 1:
            raise ValueError(f"cache_versions must be at least 1, not {size}")
        self.root = root
        self.size = size
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, version: int, upload: str) -> Path:
        """Where this upload of ``version`` is cached: whole or not at all (an entry appears by one rename)."""
        return self.root / f"{version:08d}-{upload}"

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))

    def keep(self, staging: Path, target: Path) -> None:
        """Move a verified download into place, then evict the least recently loaded entries."""
        try:
            os.rename(staging, target)
        except OSError:
            return  # another process cached it first
        _touch(target)
        entries = sorted((p for p in self.root.iterdir() if not p.name.startswith(".")), key=_mtime, reverse=True)
        stale = [p for p in self.root.glob(".tmp-*") if time.time_ns() - _mtime(p) > 3600 * 10**9]  # killed loads
        for old in entries[self.size:] + stale:
            self.drop(old)

    def drop(self, entry: Path) -> None:
        shutil.rmtree(entry, ignore_errors=True)


def default_cache_dir(location: S3Location) -> Path:
    """A folder under the system temp dir named after the bucket and prefix."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{location.bucket}/{location.prefix}".strip("/"))
    return Path(tempfile.gettempdir()) / "weldstream-object-cache" / name


def _checked(manifest: Manifest, pointer: Pointer) -> Manifest:
    """A manifest agrees with the pointer that names it: the same version and the same weights."""
    if manifest.version != pointer.version or manifest.sha256 != pointer.sha256:
        raise CorruptVersion(f"version {pointer.version}: its manifest (version {manifest.version}, sha256 "
                             f"{manifest.sha256[:12]}…) does not match its pointer (sha256 {pointer.sha256[:12]}…)")
    return manifest


def _touch(path: Path) -> None:
    now = time.time_ns()  # not the kernel's coarse file clock: two loads a millisecond apart stay in order
    os.utime(path, ns=(now, now))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # dropped by another process meanwhile
        return 0


def _pointer_name(version: int) -> str:
    return f"{POINTERS}{version:08d}.json"


def _numbered(file_name: str, version: int) -> str:
    """manifest.json -> manifest-00000007.json: each try for a number writes its own manifest."""
    stem, dot, suffix = file_name.rpartition(".")
    return f"{stem}-{version:08d}{dot}{suffix}"
