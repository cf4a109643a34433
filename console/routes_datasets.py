"""Datasets from the browser (operators): a zip of labeled scans checked, unpacked and streamed as a job.

The upload is written to the job's folder under the console's data folder as it arrives (capped by
--upload-mb), unpacked by ``uploads.unpack`` or refused whole with the reason (400); then its pairs are
checked and the good ones produced to the labeled topic by a background task (``dataset_stream``),
whose row in the jobs table the page polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request

from weldstream.classes import DEFECT_CLASSES
from weldstream.console.accounts import Account
from weldstream.console.auth import require, services
from weldstream.console.dataset_jobs import KIND, Jobs, new_id, upload_folder
from weldstream.console.dataset_stream import DatasetJob, run
from weldstream.console.form_stream import read_form
from weldstream.console.services import Services
from weldstream.console.uploads import INDEX_SUFFIXES, MAX_FILES, MAX_RATIO, Limits, unpack
from weldstream.errors import InvalidInput
from weldstream.learner.scan_folder import FolderOptions
from weldstream.limits import MAX_SCAN_SIDE

log = logging.getLogger(__name__)
TASKS = "dataset_jobs"  # Services.extras: job id -> its running task
MAX_RATE = 10_000.0
UNPACKED_PER_UPLOADED = 8  # the unpacked bound, as a multiple of --upload-mb


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Jobs a previous console left running are failed at start; this console's are stopped at its end."""
    svc: Services = app.state.services
    failed = await asyncio.to_thread(Jobs(svc.registry).fail_interrupted, svc.cfg.data_dir)
    if failed:
        log.warning("dataset jobs %s were running when the console stopped; marked failed", ", ".join(failed))
    tasks: dict[str, asyncio.Task] = svc.extras.setdefault(TASKS, {})
    try:
        yield
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


router = APIRouter(prefix="/api", tags=["datasets"], lifespan=_lifespan)


@router.get("/datasets/limits")
async def limits(request: Request, _: Annotated[Account, Depends(require("operator"))]) -> dict:
    """What an upload may be, for the page to say before a byte is sent."""
    upload_mb = services(request).cfg.upload_mb
    return {"upload_mb": upload_mb, "unpacked_mb": upload_mb * UNPACKED_PER_UPLOADED, "max_files": MAX_FILES,
            "max_ratio": MAX_RATIO, "max_side": MAX_SCAN_SIDE, "classes": list(DEFECT_CLASSES),
            "accepted": [".png", ".tif", ".tiff", ".dcm", *INDEX_SUFFIXES]}


@router.post("/datasets")
async def upload(request: Request, account: Annotated[Account, Depends(require("operator"))]) -> dict:
    """multipart: ``file`` (a zip), ``rate`` (scans/s, 0: as fast as the broker takes), ``domain``,
    ``rig_id``, ``binary_class``. Answers the job's id once the zip is unpacked; 400 names a refusal."""
    svc = services(request)
    if svc.producer is None:
        raise HTTPException(503, "the console has no Kafka connection (--kafka '') and cannot send datasets")
    job_id = new_id()
    folder = upload_folder(svc.cfg.data_dir, job_id)
    archive = folder / "upload.zip"
    cap = svc.cfg.upload_mb << 20
    try:
        folder.mkdir(parents=True)
        with archive.open("wb") as sink:
            form = await read_form(request, sink, cap, limit_text=" (--upload-mb)")
        rate, options = _options(form.fields)
        intake = await asyncio.to_thread(unpack, archive, folder / "files",
                                         Limits(max_unpacked_bytes=cap * UNPACKED_PER_UPLOADED))
        archive.unlink()
    except InvalidInput as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(400, str(exc)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    detail = {"file": form.filename, "files": intake.files, "images": intake.images, "sent": 0,
              "skipped": [list(s) for s in intake.skipped], "reason": "", "topic": svc.cfg.labeled_topic,
              "options": {"rate": rate, "domain": options.default_domain, "rig_id": options.rig_id,
                          "binary_class": options.binary_class}}
    jobs = Jobs(svc.registry)
    jobs.create(job_id, account.name, detail)
    svc.record_action("dataset upload", account.name,
                      f"job {job_id}: {form.filename} ({intake.files} files, {intake.images} images) to "
                      f"{svc.cfg.labeled_topic} at {rate:g} scans/s" + (" (no limit)" if not rate else ""))
    tasks: dict[str, asyncio.Task] = svc.extras.setdefault(TASKS, {})
    job = DatasetJob(job_id, folder, options, rate, detail, intake.converted)
    task = asyncio.create_task(run(job, jobs, svc.producer, svc.cfg.labeled_topic), name=f"dataset-{job_id}")
    tasks[job_id] = task
    task.add_done_callback(lambda _: tasks.pop(job_id, None))
    return {"job": job_id}


@router.get("/jobs")
async def recent(request: Request, _: Annotated[Account, Depends(require("operator"))],
                 limit: Annotated[int, Query(ge=1, le=500)] = 50, kind: str = "") -> dict:
    """Recent jobs (of one ``kind``, e.g. dataset, if given), newest first; each job's skipped pairs are
    counted here and listed by /api/jobs/{id}."""
    listed = await asyncio.to_thread(Jobs(services(request).registry).recent, limit, kind)
    for job in listed:
        job["skipped_count"] = len(job.pop("skipped", None) or [])
    return {"jobs": listed}


@router.get("/jobs/{job_id}")
async def one(job_id: str, request: Request, _: Annotated[Account, Depends(require("operator"))]) -> dict:
    job = await asyncio.to_thread(Jobs(services(request).registry).get, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.post("/jobs/{job_id}/cancel")
async def cancel(job_id: str, request: Request, account: Annotated[Account, Depends(require("operator"))]) -> dict:
    """Stop a running dataset job; what was sent stays sent."""
    svc = services(request)
    jobs = Jobs(svc.registry)
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    if job["kind"] != KIND:
        raise HTTPException(409, f"job {job_id} is a {job['kind']} job; this cancels dataset jobs")
    if not jobs.cancel(job_id):
        raise HTTPException(409, f"job {job_id} is {job['state']} already")
    task = svc.extras.get(TASKS, {}).get(job_id)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    svc.record_action("dataset cancel", account.name, f"job {job_id}: {job.get('file', '')}, "
                                                      f"{job['done']} of {job['total']} done")
    return jobs.get(job_id) or {}


def _options(fields: dict[str, str]) -> tuple[float, FolderOptions]:
    """The form's rate and the importer's options, each checked (InvalidInput names the field)."""
    try:
        rate = float(fields.get("rate", "") or 10)
    except ValueError:
        raise InvalidInput("rate", f"{fields['rate']!r} is not a number of scans per second") from None
    if not 0 <= rate <= MAX_RATE:
        raise InvalidInput("rate", f"must be 0 (as fast as the broker takes) .. {MAX_RATE:g} scans/s")
    binary = fields.get("binary_class", "") or "0"
    if binary not in {str(i) for i in range(len(DEFECT_CLASSES))}:
        raise InvalidInput("binary_class", f"must be a class id 0..{len(DEFECT_CLASSES) - 1} "
                                           f"({', '.join(DEFECT_CLASSES)}); 0 skips binary masks")
    domain = fields.get("domain", "").strip()
    rig_id = fields.get("rig_id", "").strip() or "import"
    for name, value in (("domain", domain), ("rig_id", rig_id)):
        if len(value) > 128:
            raise InvalidInput(name, "is longer than 128 characters")
    return rate, FolderOptions(default_domain=domain, rig_id=rig_id, binary_class=int(binary))
