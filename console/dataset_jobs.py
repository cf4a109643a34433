"""Dataset jobs as rows of the ``jobs`` table: the only part of a job that outlives the console.

A job's task lives in this process; its row says where it got to (``done`` of ``total``, what was sent,
which pairs were skipped and why). Every move is a conditional update from a running state, so a
cancel wins over a late progress report, and a task whose row was cancelled (from any console sharing
the database) stops at its next report. A console that starts finds rows its predecessor left running
and marks them failed: their tasks died with it.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from weldstream.registry import Registry

KIND = "dataset"
RUNNING = ("checking", "streaming")
FINISHED = ("done", "failed", "cancelled")
RESTARTED = "console restarted"
_COLUMNS = "id, kind, actor, state, done, total, detail, started_at, updated_at"


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def upload_folder(data_dir: Path, job_id: str) -> Path:
    """Where a job's upload and its unpacked files live until the job ends (inside the data folder)."""
    return data_dir / "uploads" / job_id


class Jobs:
    """The dataset jobs' rows in the registry's database."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def create(self, job_id: str, actor: str, detail: dict[str, Any]) -> None:
        now = time.time()
        self.registry.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (job_id, KIND, actor, "checking", 0, 0, json.dumps(detail), now, now))

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self.registry.query(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def recent(self, limit: int, kind: str = "") -> list[dict[str, Any]]:
        where, params = ("WHERE kind = ? ", (kind,)) if kind else ("", ())
        rows = self.registry.query(f"SELECT {_COLUMNS} FROM jobs {where}ORDER BY started_at DESC LIMIT ?",
                                   (*params, limit))
        return [_job(row) for row in rows]

    def report(self, job_id: str, state: str, done: int, total: int, detail: dict[str, Any]) -> bool:
        """Progress of a running job; False when the row no longer runs (cancelled): the task stops."""
        return self._move(job_id, RUNNING, state, done, total, detail)

    def finish(self, job_id: str, state: str, done: int, total: int, detail: dict[str, Any]) -> bool:
        """The job's end, unless it was cancelled first (then only its counts are kept)."""
        if self._move(job_id, RUNNING, state, done, total, detail):
            return True
        self._move(job_id, ("cancelled",), "cancelled", done, total, detail)
        return False

    def cancel(self, job_id: str) -> bool:
        """True if the job was running and is now cancelled."""
        return self.registry.execute(
            f"UPDATE jobs SET state = 'cancelled', updated_at = ? WHERE id = ? AND kind = ? AND state IN "
            f"({', '.join('?' * len(RUNNING))})", (time.time(), job_id, KIND, *RUNNING)) == 1

    def fail_interrupted(self, data_dir: Path) -> list[str]:
        """Mark the jobs a previous console left running as failed ("console restarted"), and remove
        what was left of their uploads; returns their ids."""
        marks = ", ".join("?" * len(RUNNING))
        rows = self.registry.query(f"SELECT {_COLUMNS} FROM jobs WHERE kind = ? AND state IN ({marks})",
                                   (KIND, *RUNNING))
        failed = []
        for row in rows:
            job = _job(row)
            detail = {k: v for k, v in job.items() if k not in _COLUMNS.split(", ")}
            detail["reason"] = RESTARTED
            if self._move(job["id"], RUNNING, "failed", job["done"], job["total"], detail):
                failed.append(job["id"])
            shutil.rmtree(upload_folder(data_dir, job["id"]), ignore_errors=True)
        return failed

    def _move(self, job_id: str, states: tuple[str, ...], state: str, done: int, total: int,
              detail: dict[str, Any]) -> bool:
        marks = ", ".join("?" * len(states))
        return self.registry.execute(
            f"UPDATE jobs SET state = ?, done = ?, total = ?, detail = ?, updated_at = ? "
            f"WHERE id = ? AND state IN ({marks})",
            (state, done, total, json.dumps(detail), time.time(), job_id, *states)) == 1


def _job(row: tuple) -> dict[str, Any]:
    job_id, kind, actor, state, done, total, detail, started_at, updated_at = row
    try:
        extra = json.loads(detail) if detail else {}
    except ValueError:
        extra = {}
    return {**(extra if isinstance(extra, dict) else {}), "id": job_id, "kind": kind, "actor": actor,
            "state": state, "done": int(done), "total": int(total), "started_at": float(started_at),
            "updated_at": float(updated_at)}
