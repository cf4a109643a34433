"""The review station's API: the queue, claims, the scan and its pre-label, labels and rejections."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from weldstream.codec import decode_image, tensor_to_array
from weldstream.console.accounts import Account
from weldstream.console.auth import require, services
from weldstream.console.imaging import class_map, display_png, png
from weldstream.console.labeled_scans import SEND_TIMEOUT_S, labeled_scan, pixels_changed, send_labeled
from weldstream.console.review_queue import Refused
from weldstream.errors import InvalidInput
from weldstream.v1 import stream_pb2

router = APIRouter(prefix="/api/review", tags=["review"])
REJECT_REASONS = ("not a weld", "unusable scan", "duplicate", "other")
PNG_HEADERS = {"Cache-Control": "private, max-age=3600"}


def _refused(exc: Refused) -> HTTPException:
    return HTTPException(exc.status, str(exc))


@router.get("")
async def queue(request: Request, account: Annotated[Account, Depends(require("viewer"))],
                limit: Annotated[int, Query(ge=1, le=1000)] = 50, rig: str = "", domain: str = "") -> dict:
    """Items this account may take, most doubtful first; another inspector's live claim hides an item."""
    q = services(request).queue
    items = await asyncio.to_thread(q.offered, account.name, limit, rig, domain)
    return {"items": [i.summary() for i in items], "counts": q.counts(), **q.facets()}


@router.get("/finished")
async def finished(request: Request, _: Annotated[Account, Depends(require("viewer"))],
                   limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict:
    items = services(request).queue.finished(limit)
    return {"items": [{**i.summary(), "state": i.state, "by": i.finished_by, "at": i.finished_at,
                       "labeled_domain": i.labeled_domain, "reason": i.reason} for i in items]}


@router.get("/{scan_id}")
async def item(scan_id: str, request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> dict:
    try:
        return services(request).queue.get(scan_id).detail()
    except Refused as exc:
        raise _refused(exc) from None


@router.post("/{scan_id}/claim")
async def claim(scan_id: str, request: Request, account: Annotated[Account, Depends(require("inspector"))]) -> dict:
    svc = services(request)
    try:
        until = svc.queue.claim(scan_id, account.name, svc.cfg.lease_s)
    except Refused as exc:
        raise _refused(exc) from None
    return {"scan_id": scan_id, "claimed_by": account.name, "lease_until": until}


@router.get("/{scan_id}/scan.png")
async def scan_png(scan_id: str, request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> Response:
    scan = _scan(request, scan_id)
    data = await asyncio.to_thread(lambda: display_png(decode_image(scan.image)))
    return Response(data, media_type="image/png", headers=PNG_HEADERS)


@router.get("/{scan_id}/prelabel.png")
async def prelabel_png(scan_id: str, request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> Response:
    """The server's mask as class indices, one byte a pixel (0 background .. 4 inclusion)."""
    scan = _scan(request, scan_id)
    return Response(png(tensor_to_array(scan.mask, "mask")), media_type="image/png", headers=PNG_HEADERS)


@router.post("/{scan_id}/label")
async def label(scan_id: str, request: Request, account: Annotated[Account, Depends(require("inspector"))],
                domain: str = "") -> dict:
    """The body (image/png, class indices of the scan's size) becomes a LabeledScan on the labeled topic;
    200 once Kafka acknowledged it."""
    svc = services(request)
    if svc.producer is None:
        raise HTTPException(503, "the console has no Kafka connection (--kafka '') and cannot send labels")
    body = await request.body()
    try:
        known = svc.queue.get(scan_id)
        mask = class_map(body, known.height, known.width)
    except Refused as exc:
        raise _refused(exc) from None
    except InvalidInput as exc:
        raise HTTPException(400, str(exc)) from None
    try:
        taken = svc.queue.begin(scan_id, account.name)
    except Refused as exc:
        raise _refused(exc) from None
    scan = svc.queue.scan(scan_id)
    domain = domain or svc.queue.last_domain(taken.rig_id) or taken.rig_id
    message = labeled_scan(scan, mask, domain, account.name)
    try:
        sent = await send_labeled(svc.producer, svc.cfg.labeled_topic, message, SEND_TIMEOUT_S)
    except Exception as exc:
        svc.queue.give_back(scan_id, account.name, svc.cfg.lease_s)
        raise HTTPException(503, f"Kafka did not acknowledge the label ({type(exc).__name__}: {exc}); "
                                 "it is still yours, try again") from None
    svc.queue.finish(scan_id, account.name, "labeled", labeled_domain=domain)
    changed = pixels_changed(scan, mask)
    svc.record_action("label", account.name, f"scan {scan_id} domain {domain}: {changed} px changed from the "
                                             f"pre-label", version=scan.model_version)
    return {"scan_id": scan_id, "domain": domain, "labeled_by": account.name, "prelabel_version": scan.model_version,
            "pixels_changed": changed, "partition": sent.partition, "offset": sent.offset, "at": time.time()}


class Rejection(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description=f"e.g. {', '.join(REJECT_REASONS)}")


@router.post("/{scan_id}/reject")
async def reject(scan_id: str, body: Rejection, request: Request,
                 account: Annotated[Account, Depends(require("inspector"))]) -> dict:
    svc = services(request)
    try:
        svc.queue.begin(scan_id, account.name)
    except Refused as exc:
        raise _refused(exc) from None
    svc.queue.finish(scan_id, account.name, "rejected", reason=body.reason)
    svc.record_action("reject", account.name, f"scan {scan_id}: {body.reason}")
    return {"scan_id": scan_id, "rejected_by": account.name, "reason": body.reason}


def _scan(request: Request, scan_id: str) -> stream_pb2.ReviewScan:
    try:
        return services(request).queue.scan(scan_id)
    except Refused as exc:
        raise _refused(exc) from None
