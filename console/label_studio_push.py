"""`weldstream label-studio push` and `sync`: the review queue's scans out to a Label Studio project, and its
finished annotations back, for sites where Label Studio cannot call the console.

Push reads the console's review queue (its database, not the topic: the console already keeps every
ReviewScan with its original pixels, which the LabeledScan must carry) and holds each pushed item for the
``label-studio`` account, so inspectors in the console's own review station do not label it too. Each task
carries the scan as a data URL of an 8-bit windowed PNG (bounded by ``--image-mb``), the served mask as its
pre-annotation, and the ids that bring the annotation home. At most ``--open-tasks`` unlabelled tasks are
kept in the project.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from weldstream.codec import decode_image, tensor_to_array
from weldstream.console.imaging import display_png
from weldstream.console.label_studio_annotations import Busy, NotSent, Revision, Revisions
from weldstream.console.label_studio_api import LabelStudio
from weldstream.console.label_studio_brush import labelling_config, mask_to_results
from weldstream.console.label_studio_config import LABEL_STUDIO_ACCOUNT, LabelStudioConfig
from weldstream.console.review_queue import Refused
from weldstream.console.services import Services
from weldstream.errors import InvalidInput
from weldstream.v1 import stream_pb2

log = logging.getLogger(__name__)
PUSH_LEASE_S = 30 * 24 * 3600.0  # a pushed scan returns to the console's queue if nobody labels it in 30 days
IMPORT_BATCH = 20


def task_for(scan: stream_pb2.ReviewScan, domain: str, image_limit: int) -> dict[str, Any]:
    """A Label Studio task of one review scan, with the served mask as its prediction; ValueError when the
    scan's picture is over ``image_limit`` bytes."""
    picture = display_png(decode_image(scan.image))
    if len(picture) > image_limit:
        raise ValueError(f"scan {scan.scan_id}: its picture is {len(picture) / 2**20:.1f} MiB, over --image-mb")
    mask = tensor_to_array(scan.mask, "mask") if scan.HasField("mask") else None
    height, width = decode_image(scan.image).shape[-2:]
    task: dict[str, Any] = {"data": {
        "image": "data:image/png;base64," + base64.b64encode(picture).decode(), "scan_id": scan.scan_id,
        "rig_id": scan.rig_id, "domain": domain, "doubt": round(float(scan.doubt), 4),
        "model_version": int(scan.model_version), "reasons": list(scan.reasons), "width": int(width),
        "height": int(height)}}
    if mask is not None:
        task["predictions"] = [{"model_version": f"v{scan.model_version}", "score": round(1.0 - float(scan.doubt), 4),
                                "result": mask_to_results(mask)}]
    return task


async def connect(svc: Services, ls: LabelStudio, cfg: LabelStudioConfig) -> dict[str, Any]:
    """The project (created or reused by title) with the console as its ML backend and webhook."""
    project = await ls.project(cfg.project, labelling_config())
    if cfg.backend_url:
        token = cfg.console_token()
        account = svc.accounts.by_token(token)
        if account is None or not account.may("inspector"):
            raise ValueError("--console-token-file holds no inspector's token of this console")
        url = cfg.backend_url.rstrip("/")
        await ls.connect_backend(project["id"], url, account.name, token)
        await ls.connect_webhook(project["id"], url + "/webhook", token)
    return project


async def push(svc: Services, ls: LabelStudio, cfg: LabelStudioConfig) -> dict[str, Any]:
    project = await connect(svc, ls, cfg)
    room = cfg.open_tasks - await ls.open_tasks(project["id"])
    report: dict[str, Any] = {"project": project["id"], "pushed": 0, "too_large": 0, "room": max(room, 0)}
    if room <= 0:
        return report
    revisions = Revisions(svc)
    pushed = revisions.pushed()
    candidates = [i for i in svc.queue.offered(LABEL_STUDIO_ACCOUNT, 1000) if i.scan_id not in pushed][:room]
    tasks, scans = [], []
    for item in candidates:
        scan = svc.queue.scan(item.scan_id)
        domain = scan.domain or svc.queue.last_domain(scan.rig_id) or scan.rig_id
        try:
            task = await asyncio.to_thread(task_for, scan, domain, int(cfg.image_mb * 2**20))
            svc.queue.claim(item.scan_id, LABEL_STUDIO_ACCOUNT, PUSH_LEASE_S)
        except ValueError as exc:
            log.warning("%s; it stays in the console's review queue", exc)
            report["too_large"] += 1
            continue
        except Refused:
            continue  # an inspector took it meanwhile
        tasks.append(task)
        scans.append(scan)
    for start in range(0, len(tasks), IMPORT_BATCH):
        batch, batch_scans = tasks[start:start + IMPORT_BATCH], scans[start:start + IMPORT_BATCH]
        try:
            ids = await ls.import_tasks(project["id"], batch)
        except Exception:
            for scan in scans[start:]:  # a lease of 0 hands the items back to the console's queue
                svc.queue.claim(scan.scan_id, LABEL_STUDIO_ACCOUNT, 0.0)
            raise
        for scan, task_id in zip(batch_scans, ids, strict=False):
            revisions.record_push(scan.scan_id, project["id"], task_id, int(scan.model_version))
        report["pushed"] += len(batch)
    return report


async def sync(svc: Services, ls: LabelStudio, cfg: LabelStudioConfig) -> dict[str, Any]:
    """Every finished annotation of the project through the same once-per-revision path as the webhook."""
    project = await ls.project(cfg.project, labelling_config())
    revisions = Revisions(svc)
    report = {"project": project["id"], "sent": 0, "already": 0, "refused": 0, "failed": 0}
    for task in await ls.finished(project["id"]):
        for annotation in task.get("annotations") or []:
            try:
                rev = Revision.parse(annotation, task)
                if revisions.state(rev.annotation_id, rev.updated_at) == "sent":
                    report["already"] += 1
                    continue
                answer = await revisions.take(rev)
            except (InvalidInput, Refused) as exc:
                log.warning("Label Studio task %s: %s", task.get("id"), exc)
                report["refused"] += 1
                continue
            except (Busy, NotSent) as exc:
                log.warning("Label Studio task %s: %s (the next sync tries again)", task.get("id"), exc)
                report["failed"] += 1
                continue
            report["sent" if answer["status"] == "sent" else "already"] += 1
    return report
