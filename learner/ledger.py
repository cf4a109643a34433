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
        and the entries stay buffered for the next flush."""
        if not self._buffer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(asdict(e)) + "\n" for e in self._buffer)
        with open(self.path, "a", encoding="utf-8") as handle:
            size = handle.tell()
            try:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(size)
                raise
        self._buffer.clear()


def read_ledger(model_dir: Path) -> list[Entry]:
    path = Path(model_dir) / LEDGER_FILE
    if not path.exists():
        return []
    return [Entry(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
