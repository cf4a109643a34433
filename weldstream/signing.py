"""Signed model versions: an HMAC-SHA256 over a version's manifest, which holds its weights' SHA-256.

With a key configured, the learner (or a consolidation job) signs every version it publishes, and a
server loads only versions whose signature matches: a process that can write the weight store but does
not hold the key cannot make servers load its weights.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

MIN_KEY_BYTES = 16


def read_key(path: Path | str) -> bytes:
    """The key file's bytes (surrounding whitespace stripped); at least MIN_KEY_BYTES of them."""
    key = Path(path).read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"signing key {path} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def sign(manifest: bytes, key: bytes) -> str:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def verify(manifest: bytes, signature: str, key: bytes) -> bool:
    return hmac.compare_digest(sign(manifest, key), signature.strip())
