"""Which weight store a location names: a directory path, or an ``s3://bucket/prefix`` URL.

Both stores have one interface (versions, latest, pinned, served, pin, unpin, publish, manifest, load, root), so
servers, the learner and ``weldstream models`` take either. The object store's module, and boto3 with it, is
imported only when a location is an s3:// URL: a directory-only process never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from weldstream.weight_store import WeightStore

if TYPE_CHECKING:
    from weldstream.object_store import ObjectWeightStore

OBJECT_STORE_SCHEME = "s3://"


def is_object_store(location: str | Path) -> bool:
    """Whether ``location`` is an s3:// URL, also one that went through Path (which makes it ``s3:/bucket/…``)."""
    if isinstance(location, Path):
        return location.parts[:1] == ("s3:",)
    return location.startswith(OBJECT_STORE_SCHEME)


def open_store(location: str | Path, signing_key: bytes | None = None,
               cache_dir: Path | None = None) -> WeightStore | ObjectWeightStore:
    """The store at ``location``; ``cache_dir`` (where an object store keeps loaded versions) is ignored for a
    directory, whose versions are already local."""
    if is_object_store(location):
        from weldstream.object_store import ObjectWeightStore

        url = str(location) if isinstance(location, str) else OBJECT_STORE_SCHEME + "/".join(location.parts[1:])
        return ObjectWeightStore(url, signing_key, cache_dir)
    return WeightStore(location, signing_key)
