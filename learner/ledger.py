"""An append-only audit trail of what happened to every labeled scan: trained on, held out, dead-lettered.

Lines are appended (and fsynced) just before a checkpoint is written and the offsets are committed, so
after any crash the ledger covers at least every committed message; a re-read message may appear twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

LEDGER_FILE = "learner-ledger.jsonl"


@dataclass(frozen=True)
class Entry:
    scan_id: str
    domain: str
    use: str  # "train" | "holdout" | "dead_letter"
    partition: int
    offset: int


class Ledger:
    def __init__(self, model_dir: Path) -> None:
        self.path = Path(model_dir) / LEDGER_FILE
        self._buffer: list[Entry] = []

    def record(self, entry: Entry) -> None:
        self._buffer.append(entry)

    def flush(self) -> None:
        """Append the buffered entries, all or none: a failed write (a full disk) is cut back off the file
        and the entries stay buffered for the next flush. A half-written last line (a crash in the middle
        of a write) is cut off first; its entries were never durable and are recorded again on re-reading."""
        if not self._buffer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = memoryview("".join(json.dumps(asdict(e)) + "\n" for e in self._buffer).encode())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = _complete_lines(fd)
            os.ftruncate(fd, size)
            os.lseek(fd, size, os.SEEK_SET)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        self._buffer.clear()


def _complete_lines(fd: int) -> int:
    """Bytes of the file up to and including its last newline."""
    size = os.fstat(fd).st_size
    position = size
    while position > 0:
        chunk = os.pread(fd, min(4096, position), max(0, position - 4096))
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return position - len(chunk) + newline + 1
        position -= len(chunk)
    return 0


def read_ledger(model_dir: Path) -> list[Entry]:
    """Every complete entry; a half-written last line is left out."""
    path = Path(model_dir) / LEDGER_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    return [Entry(**json.loads(line)) for line in lines[:-1] if line]
