"""The learner's checkpoint: one file, replaced atomically, holding everything a restart needs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "learner-checkpoint.pt"


def checkpoint_path(model_dir: Path) -> Path:
    return Path(model_dir) / CHECKPOINT_FILE


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, rename: a crash leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    if not path.exists():
        return None
    # The checkpoint holds our own dataclasses (pending samples), so it is not a weights-only file;
    # it is written and read only by the learner on its own disk.
    return torch.load(path, map_location=device, weights_only=False)
