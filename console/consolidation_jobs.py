"""Consolidations started from the browser: `weldstream consolidate` as a child process, its progress in ``jobs``.

The job is the command itself (the same code, the same resumable progress file), run with the console's
model dir, store, registry and Kafka, so nothing about training lives in the console. Its progress bar's
``done/total`` becomes the row's progress, its last lines are kept for the page, and cancelling sends
SIGTERM to its process group: the command saves its progress and stops, and a job started again with the
same settings resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from weldstream.console.config import ConsoleConfig
from weldstream.console.services import Services
from weldstream.learner.consolidate_config import STRATEGIES, ConsolidateConfig
from weldstream.settings import flag_of, settings_of

log = logging.getLogger(__name__)
KIND = "consolidate"
TAIL_LINES = 40
STOP_GRACE_S = 30.0  # SIGTERM lets the command finish its step and save; SIGKILL after this
WRITE_EVERY_S = 0.5  # progress reaches the database at most this often
# tqdm's "| 4/10 [00:01<...", or without tqdm the log's "consolidate joint: 4/10 steps".
PROGRESS = re.compile(r"(?:\|\s*|: )(\d+)/(\d+)(?: \[| steps)")
PUBLISHED = re.compile(r"published version (\d+)")
REFUSED = re.compile(r"refused: (.*?); compared with")
STOPPED_EXIT = 3  # `weldstream consolidate` stopped by a signal, its progress saved
JOBS = "consolidations"  # the key of Services.extras


class ConsolidationRequest(BaseModel):
    """What an operator may choose; anything left out takes `weldstream consolidate`'s default."""

    strategy: str = Field("ewc", description=f"one of {', '.join(STRATEGIES)}")
    data: str = Field("", max_length=1000, description="a folder or s3://bucket/datasets/NAME instead of Kafka")
    domains: list[str] = Field(default_factory=list, description="domains to learn, in order (default: all)")
    epochs: int | None = Field(None, ge=1, le=1000)
    crop_size: int | None = Field(None, ge=0, le=4096)
    crops_per_scan: int | None = Field(None, ge=1, le=1000)
    batch_size: int | None = Field(None, ge=1, le=4096)
    learning_rate: float | None = Field(None, gt=0, le=1)
    from_scratch: bool = False
    restart: bool = Field(False, description="ignore the saved progress of an earlier, stopped run")
    device: str = Field("", max_length=32, description="auto, cpu, cuda, cuda:1 ... ('' : auto)")
    seed: int | None = Field(None, ge=0)

    def settings(self, cfg: ConsoleConfig) -> ConsolidateConfig:
        """The command's configuration, checked here so a bad request is a 400, not a failed job."""
        chosen: dict[str, Any] = {k: v for k, v in self.model_dump().items() if v not in (None, "", [])}
        if "domains" in chosen:
            chosen["domains"] = tuple(chosen["domains"])
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        return ConsolidateConfig(kafka=cfg.kafka, model_dir=cfg.model_dir, store=cfg.store, registry=cfg.registry,
                                 kafka_security=cfg.kafka_security, **chosen)


def command(job: ConsolidateConfig) -> list[str]:
    """`python -m weldstream.cli consolidate` with every setting spelled out (``--flag=value``, so a value that
    starts with a dash stays a value)."""
    argv = [sys.executable, "-m", "weldstream.cli", "consolidate"]
    for source in (job, job.kafka_security):
        for f in settings_of(type(source)):
            value = getattr(source, f.name)
            if f.name == "progress":
                continue
            if value is None:  # '' turns an optional setting off (--kafka '' : no Kafka)
                argv.append(f"{flag_of(f)}=")
            elif isinstance(value, bool):
                argv.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
            elif isinstance(value, tuple):
                argv.append(f"{flag_of(f)}={','.join(value)}")
            else:
                argv.append(f"{flag_of(f)}={value}")
    return [*argv, "--progress"]


@dataclass
class ConsolidationJob:
    """One child process and what it has said; ``run()`` lasts as long as the process."""

    svc: Services
    id: str
    actor: str
    settings: ConsolidateConfig
    state: str = "running"
    done: int = 0
    total: int = 0
    detail: dict[str, Any] = field(default_factory=dict)
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    process: asyncio.subprocess.Process | None = None
    cancel_requested: str = ""
    _written_at: float = 0.0

    @property
    def live(self) -> bool:
        return self.state == "running"

    def create_row(self) -> None:
        now = time.time()
        self.detail = {"strategy": self.settings.strategy, "data": self.settings.data or "",
                       "domains": list(self.settings.domains), "epochs": self.settings.epochs,
                       "progress": "starting", "log": []}
        self.svc.registry.execute(
            "INSERT INTO jobs (id, kind, actor, state, done, total, detail, started_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.id, KIND, self.actor, self.state, 0, 0, json.dumps(self.detail), now, now))

    async def run(self) -> None:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command(self.settings), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.detail["pid"] = self.process.pid
            await self._read(self.process)
            code = await self.process.wait()
        except asyncio.CancelledError:  # the console is stopping: so does the job, its progress saved
            self.cancel_requested = self.cancel_requested or "the console stopped"
            await self._stop()
            await self._finish(None)
            raise
        except Exception as exc:
            log.exception("consolidation job %s could not run", self.id)
            self.lines.append(f"{type(exc).__name__}: {exc}")
            await self._finish(None)
            return
        await self._finish(code)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        pending = ""
        while chunk := await process.stdout.read(4096):
            pending += chunk.decode(errors="replace")
            *complete, pending = re.split(r"[\r\n]", pending)
            for line in complete:
                self._heard(line.rstrip())
            await self._write(force=False)
        if pending:
            self._heard(pending.rstrip())

    def _heard(self, line: str) -> None:
        if not line:
            return
        progress = PROGRESS.search(line)
        if progress:
            self.done, self.total = int(progress.group(1)), int(progress.group(2))
            self.detail["progress"] = f"{self.done}/{self.total} steps"
            if self.lines and PROGRESS.search(self.lines[-1]):
                self.lines[-1] = line  # a progress bar redraws itself: keep its latest state only
                return
        self.lines.append(line)

    async def cancel(self, reason: str) -> None:
        self.cancel_requested = reason or "cancelled"
        await self._stop()

    async def _stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), wait_s)
                return
            except TimeoutError:
                log.warning("consolidation job %s did not stop on %s", self.id, sig.name)

    async def _finish(self, code: int | None) -> None:
        text = "\n".join(self.lines)
        published, refused = PUBLISHED.search(text), REFUSED.search(text)
        self.detail["returncode"] = code
        if self.cancel_requested and code != 0:
            self.state, self.detail["outcome"] = "cancelled", self.cancel_requested
        elif code == 0 and published:
            self.state, self.detail["outcome"] = "done", f"published version {published.group(1)}"
            self.detail["version"] = int(published.group(1))
        elif code == 1 and refused:
            self.state, self.detail["outcome"] = "done", f"refused: {refused.group(1)}"
        else:
            self.state, self.detail["outcome"] = "failed", (self.lines[-1] if self.lines else f"exit code {code}")
        self.detail["progress"] = self.detail["outcome"]
        await self._write(force=True)

    async def _write(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._written_at < WRITE_EVERY_S:
            return
        self._written_at = now
        self.detail["log"] = list(self.lines)
        await asyncio.to_thread(
            self.svc.registry.execute, "UPDATE jobs SET state = ?, done = ?, total = ?, detail = ?, updated_at = ? "
            "WHERE id = ?", (self.state, self.done, self.total, json.dumps(self.detail), time.time(), self.id))


def live_jobs(svc: Services) -> dict[str, ConsolidationJob]:
    return svc.extras.setdefault(JOBS, {})


async def start_job(svc: Services, actor: str, request: ConsolidationRequest) -> ConsolidationJob:
    """Check the request, write the row, start the process; one consolidation at a time (they share the
    model dir's progress file). Raises ValueError (bad settings) or RuntimeError (one is running)."""
    settings = request.settings(svc.cfg)
    running = [j for j in live_jobs(svc).values() if j.live]
    if running:
        raise RuntimeError(f"consolidation job {running[0].id} is still running; cancel it or wait")
    job = ConsolidationJob(svc, uuid.uuid4().hex[:12], actor, settings)
    await asyncio.to_thread(job.create_row)
    live_jobs(svc)[job.id] = job
    svc.tasks.append(asyncio.create_task(job.run(), name=f"consolidation-{job.id}"))
    return job


def job_view(row: tuple) -> dict[str, Any]:
    """A ``jobs`` row as the API shows every job."""
    job_id, kind, actor, state, done, total, detail, started_at, updated_at = row
    return {"id": job_id, "kind": kind, "actor": actor, "state": state, "done": int(done), "total": int(total),
            "detail": json.loads(detail), "started_at": float(started_at), "updated_at": float(updated_at)}


JOB_COLUMNS = "id, kind, actor, state, done, total, detail, started_at, updated_at"


def read_job(svc: Services, job_id: str) -> dict[str, Any] | None:
    rows = svc.registry.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND kind = ?", (job_id, KIND))
    return _seen_from(svc, job_view(rows[0])) if rows else None


def recent_jobs(svc: Services, limit: int = 10) -> list[dict[str, Any]]:
    rows = svc.registry.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE kind = ? ORDER BY started_at DESC "
                              f"LIMIT {int(limit)}", (KIND,))
    return [_seen_from(svc, job_view(row)) for row in rows]


def _seen_from(svc: Services, view: dict[str, Any]) -> dict[str, Any]:
    if view["state"] == "running" and view["id"] not in live_jobs(svc):
        view["state"] = "interrupted"  # its console stopped before it ended (the progress file keeps its work)
    return view

