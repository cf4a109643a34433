"""Which weight store a location names: a directory path, or an ``s3://bucket/prefix`` URL.

Both stores have one interface (versions, latest, pinned, served, pin, unpin, publish, manifest, load, root), so
servers, the learner and ``weldstream models`` take either. The object store's module, and boto3 with it, is
imported only when a location is an s3:// URL: a directory-only process never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from weldstream.s3_client import S3Location
from weldstream.weight_store import WeightStore

if TYPE_CHECKING:
    from weldstream.object_store import ObjectWeightStore

OBJECT_STORE_SCHEME = "s3://"
# Either store; a string, so that naming the type never imports the object store (and boto3).
VersionStore: TypeAlias = "WeightStore | ObjectWeightStore"
# Where a process that reads an object store keeps the versions it loaded: under its own --model-dir.
CACHE_DIR = "cache"
# The settings every command that reads or writes versions takes (serve, learn, consolidate, models).
STORE_HELP = ("where versions are published and read: '' for the directory --model-dir, another directory, or "
              "s3://bucket/prefix for an S3-compatible bucket (AWS S3, Ceph, SeaweedFS, Garage, MinIO), reached "
              "with AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a credentials file), "
              "AWS_REGION and AWS_CA_BUNDLE")
MODEL_DIR_HELP = ("the weight store directory (without --store) and this process's local files: checkpoint, ledger, "
                  "registry.sqlite, and with --store a cache of loaded versions in cache/")


def is_object_store(location: str | Path) -> bool:
    """Whether ``location`` is an s3:// URL, also one that went through Path (which makes it ``s3:/bucket/…``)."""
    if isinstance(location, Path):
        return location.parts[:1] == ("s3:",)
    return location.startswith(OBJECT_STORE_SCHEME)


def store_location(text: str) -> str:
    """A --store value as given ('' , a directory or an s3:// URL), refused at the command line when a URL names
    no bucket."""
    if is_object_store(text):
        S3Location.parse(text)
    return text


def open_store(location: str | Path, signing_key: bytes | None = None,
               cache_dir: Path | None = None) -> VersionStore:
    """The store at ``location``; ``cache_dir`` (where an object store keeps loaded versions) is ignored for a
    directory, whose versions are already local."""
    if is_object_store(location):
        from weldstream.object_store import ObjectWeightStore

        url = str(location) if isinstance(location, str) else OBJECT_STORE_SCHEME + "/".join(location.parts[1:])
        return ObjectWeightStore(url, signing_key, cache_dir)
    return WeightStore(location, signing_key)


def configured_store(store: str, model_dir: Path | str, signing_key: bytes | None = None) -> VersionStore:
    """The store a process's settings name: ``--store`` if given, else the directory ``--model-dir``; an object
    store keeps the versions it loads in ``<model-dir>/cache``."""
    return open_store(store or model_dir, signing_key, cache_dir=Path(model_dir) / CACHE_DIR)
