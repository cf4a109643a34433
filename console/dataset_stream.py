"""An unpacked dataset's pairs checked with `weldstream import`'s own code, then produced to the labeled topic.

Checking reads every pair with ``read_pair`` (the learner's decoder is the check) and keeps only which
pairs passed, not their pixels, so a large dataset costs no memory; streaming reads each good pair again
and produces it, keyed by scan id, at the chosen rate. A pair whose files lie outside the upload (an index
CSV naming ``/etc/...`` or ``../``) is skipped: only the uploaded files are read.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from weldstream.console.dataset_jobs import Jobs
from weldstream.errors import InvalidInput
from weldstream.learner.scan_folder import FolderOptions, Pair, find_pairs, read_pair
from weldstream.pacing import keep_pace

log = logging.getLogger(__name__)
REPORT_EVERY_S = 0.5
IN_FLIGHT = 64
STOPPED = "the console stopped while the job ran"


@dataclass
class DatasetJob:
    """One running job: its row's id, its folder, and the counts its row reports."""

    job_id: str
    folder: Path
    options: FolderOptions
    rate: float
    detail: dict[str, Any] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)  # shown under their names in the zip
    state: str = "checking"
    done: int = 0
    total: int = 0
    _reported: float = 0.0

    @property
    def files(self) -> Path:
        return self.folder / "files"

    def skip(self, pair: Pair, reason: str) -> None:
        """Listed with the reason; the console's own folders are left out of both (the zip's paths)."""
        for root in {str(self.files.resolve()), str(self.files)}:
            reason = reason.replace(root + "/", "")
        self.detail["skipped"].append([self._relative(pair.image), reason])

    def _relative(self, path: Path) -> str:
        try:
            relative = path.resolve().relative_to(self.files.resolve()).as_posix()
        except ValueError:
            return str(path)
        return self.converted.get(relative, relative)


class Cancelled(Exception):
    """The job's row was cancelled (here or by another console); the task stops."""


async def run(job: DatasetJob, jobs: Jobs, producer: AIOKafkaProducer, topic: str) -> None:
    """Check, then stream; the row ends done, failed (with the reason) or cancelled. The job's folder is
    removed at the end whichever way it ends."""
    job.detail.setdefault("skipped", [])
    job.detail.setdefault("sent", 0)
    try:
        good = await _check(job, jobs)
        await _stream(job, jobs, good, producer, topic)
        job.state = "done"
        jobs.finish(job.job_id, "done", job.done, job.total, job.detail)
    except (Cancelled, asyncio.CancelledError) as exc:
        # Cancelled by a person: the row says so already and keeps the counts. Else the console is stopping.
        if not jobs.report(job.job_id, "failed", job.done, job.total, {**job.detail, "reason": STOPPED}):
            jobs.finish(job.job_id, "cancelled", job.done, job.total, job.detail)
        if isinstance(exc, asyncio.CancelledError):
            raise
    except Exception as exc:  # noqa: BLE001 - the job fails with the reason; the console goes on
        log.warning("dataset job %s failed: %s", job.job_id, exc)
        job.detail["reason"] = f"{type(exc).__name__}: {exc}"
        jobs.finish(job.job_id, "failed", job.done, job.total, job.detail)
    finally:
        await asyncio.to_thread(shutil.rmtree, job.folder, True)


async def _check(job: DatasetJob, jobs: Jobs) -> list[Pair]:
    pairs: list[Pair] = await asyncio.to_thread(lambda: list(find_pairs(job.files, job.options)))
    job.total = len(pairs)
    job.detail["pairs"] = len(pairs)
    _report(job, jobs, force=True)
    seen: dict[str, Path] = {}
    good = []
    for pair in pairs:
        reason = await asyncio.to_thread(_problem, pair, job, seen)
        if reason:
            job.skip(pair, reason)
        else:
            seen[pair.scan_id] = pair.image
            good.append(pair)
        job.done += 1
        _report(job, jobs)
    job.detail["good"] = len(good)
    return good


def _problem(pair: Pair, job: DatasetJob, seen: dict[str, Path]) -> str:
    """Why a pair cannot be sent ('' if it can): the importer's checks, and the upload's own bounds."""
    root = job.files.resolve()
    for path in (pair.image, pair.mask):
        if path is not None and not path.resolve().is_relative_to(root):
            return f"file: {path} is outside the upload; an index may only name files in the zip"
    if pair.scan_id in seen:
        return f"scan id {pair.scan_id!r} is already taken by {job._relative(seen[pair.scan_id])}"
    try:
        read_pair(pair, job.options)
    except InvalidInput as exc:
        return str(exc)
    return ""


async def _stream(job: DatasetJob, jobs: Jobs, good: list[Pair], producer: AIOKafkaProducer, topic: str) -> None:
    job.state, job.done, job.total = "streaming", 0, len(good)
    _report(job, jobs, force=True)
    pending: deque[asyncio.Future] = deque()
    started = time.monotonic()
    for queued, pair in enumerate(good, start=1):
        try:
            message, _ = await asyncio.to_thread(read_pair, pair, job.options)
        except InvalidInput as exc:  # changed since it was checked: it cannot be, but say so if it is
            job.skip(pair, str(exc))
            continue
        pending.append(await producer.send(topic, message.SerializeToString(), key=pair.scan_id.encode()))
        while pending and (len(pending) >= IN_FLIGHT or pending[0].done()):
            await _acknowledged(job, pending.popleft())
        _report(job, jobs)
        await keep_pace(started, queued, job.rate)
    while pending:
        await _acknowledged(job, pending.popleft())


async def _acknowledged(job: DatasetJob, sent: asyncio.Future) -> None:
    await sent  # a Kafka error fails the job with its reason
    job.done += 1
    job.detail["sent"] = job.done


def _report(job: DatasetJob, jobs: Jobs, force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - job._reported < REPORT_EVERY_S:
        return
    job._reported = now
    if not jobs.report(job.job_id, job.state, job.done, job.total, job.detail):
        raise Cancelled(job.job_id)
