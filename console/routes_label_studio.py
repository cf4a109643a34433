"""Label Studio's door into the loop: the console answers as an ML backend and takes its webhooks.

Mounted under ``/label-studio``: ``GET /health``, ``POST /setup`` and ``POST /predict`` (the live server's
masks as brush pre-annotations, ``model_version`` the served version, ``score`` one minus the doubt) and
``POST /webhook`` (an annotation created or updated becomes a LabeledScan, answered 200 only once Kafka
acknowledged it; a deletion is recorded). Label Studio authenticates with a console account: basic auth
(name and API token) for the ML backend, a bearer token on the webhook; the account must be an inspector.
Bodies over ``MAX_BODY_MB`` are refused before they are read in full.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, HTTPException, Request

from weldstream.codec import tensor_to_array
from weldstream.console.accounts import Account
from weldstream.console.auth import services
from weldstream.console.label_studio_annotations import Busy, NotSent, Revision, Revisions
from weldstream.console.label_studio_brush import mask_to_results
from weldstream.console.label_studio_config import BACKEND_PREFIX
from weldstream.console.review_queue import Refused
from weldstream.console.services import Services
from weldstream.errors import InvalidInput
from weldstream.v1 import segmenter_pb2

log = logging.getLogger(__name__)
router = APIRouter(prefix=BACKEND_PREFIX, tags=["label-studio"])
MAX_BODY_MB = 32
SEGMENT_TIMEOUT_S = 60.0
SETUP_TIMEOUT_S = 2.5  # Label Studio waits 3 s for /setup


def label_studio_caller(request: Request) -> Account:
    """The inspector account Label Studio calls with: ``Bearer <token>`` or basic auth ``name:<token>``."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    accounts = services(request).accounts
    account = None
    if scheme.lower() == "bearer":
        account = accounts.by_token(credential.strip())
    elif scheme.lower() == "basic":
        try:
            name, _, token = base64.b64decode(credential.strip()).decode().partition(":")
        except ValueError:
            name, token = "", ""
        account = accounts.by_token(token)
        if account is not None and account.name != name:
            account = None
    if account is None:
        raise HTTPException(401, "Label Studio must send a console API token (basic auth ACCOUNT:TOKEN for the ML "
                                 "backend, 'Authorization: Bearer TOKEN' on the webhook)",
                            headers={"WWW-Authenticate": 'Basic realm="weldstream"'})
    if not account.may("inspector"):
        raise HTTPException(403, f"{account.name} is a {account.role}; Label Studio needs an inspector's token")
    return account


Caller = Annotated[Account, Depends(label_studio_caller)]


async def json_body(request: Request) -> Any:
    """The JSON body, read up to MAX_BODY_MB (413 beyond, as soon as the size is known)."""
    limit = MAX_BODY_MB << 20
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is {int(declared) >> 20} MiB; at most {MAX_BODY_MB} MiB is read")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is over {MAX_BODY_MB} MiB; at most {MAX_BODY_MB} MiB is read")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError as exc:
        raise HTTPException(400, f"the body is not JSON ({exc})") from None


def revisions(svc: Services) -> Revisions:
    if "label_studio" not in svc.extras:
        svc.extras["label_studio"] = Revisions(svc)
    return svc.extras["label_studio"]


@router.get("/health")
async def health() -> dict:
    return {"status": "UP", "model_class": "weldstream"}


@router.post("/setup")
async def setup(request: Request, _: Caller) -> dict:
    """The served version, which Label Studio records as the backend's model_version."""
    svc = services(request)
    await json_body(request)
    try:
        model = await svc.segmenter().GetModel(segmenter_pb2.GetModelRequest(), timeout=SETUP_TIMEOUT_S,
                                               metadata=svc.connection.metadata())
    except grpc.aio.AioRpcError as exc:
        raise HTTPException(503, f"the weldstream server at {svc.cfg.connection.server} did not answer: "
                                 f"{exc.code().name} {exc.details()}") from None
    return {"model_version": f"v{model.version}"}


@router.post("/predict")
async def predict(request: Request, _: Caller) -> dict:
    """One prediction per task, in order: the live server's mask of the task's scan as brush layers."""
    svc = services(request)
    body = await json_body(request)
    tasks = body.get("tasks") if isinstance(body, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise HTTPException(400, "'tasks' is missing or empty")
    return {"results": [await _predict_one(svc, task, i) for i, task in enumerate(tasks)]}


async def _predict_one(svc: Services, task: Any, index: int) -> dict:
    data = task.get("data") if isinstance(task, dict) else None
    scan_id = data.get("scan_id") if isinstance(data, dict) else None
    if not isinstance(scan_id, str) or not scan_id:
        raise HTTPException(400, f"tasks[{index}].data.scan_id is missing: the task was not pushed by weldstream")
    try:
        scan = svc.queue.scan(scan_id)
    except Refused as exc:
        raise HTTPException(exc.status, f"tasks[{index}]: {exc}") from None
    call = segmenter_pb2.SegmentRequest(scan_id=scan_id, image=scan.image, return_regions=True, rig_id=scan.rig_id)
    try:
        answer = await svc.segmenter().Segment(call, timeout=SEGMENT_TIMEOUT_S, metadata=svc.connection.metadata())
    except grpc.aio.AioRpcError as exc:
        raise HTTPException(503, f"the weldstream server at {svc.cfg.connection.server} did not segment "
                                 f"{scan_id}: {exc.code().name} {exc.details()}") from None
    results = await asyncio.to_thread(mask_to_results, tensor_to_array(answer.mask, "mask"))
    revisions(svc).predicted(scan_id, int(answer.model_version))
    return {"result": results, "score": round(1.0 - float(answer.doubt), 4),
            "model_version": f"v{answer.model_version}"}


@router.post("/webhook")
async def webhook(request: Request, _: Caller) -> dict:
    """ANNOTATION_CREATED / ANNOTATION_UPDATED -> one LabeledScan per revision, 200 once Kafka acknowledged it;
    ANNOTATIONS_DELETED -> operator actions. Other actions are acknowledged and ignored."""
    svc = services(request)
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("action"), str):
        raise HTTPException(400, "not a Label Studio webhook: 'action' is missing")
    action = body["action"]
    if action == "ANNOTATIONS_DELETED":
        ids = [a.get("id") for a in body.get("annotations") or [] if isinstance(a, dict)]
        if not ids or not all(isinstance(i, int) for i in ids):
            raise HTTPException(400, "'annotations' must list the deleted annotations' ids")
        return revisions(svc).forget(ids)
    if action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return {"status": f"ignored ({action})"}
    try:
        return await revisions(svc).take(Revision.parse(body.get("annotation"), body.get("task")))
    except InvalidInput as exc:
        raise HTTPException(400, str(exc)) from None
    except Refused as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except Busy as exc:
        raise HTTPException(409, str(exc)) from None
    except NotSent as exc:
        log.warning("Label Studio annotation not sent: %s", exc)
        raise HTTPException(503, f"{exc}; nothing was recorded: Label Studio's next delivery or `weldstream "
                                 "label-studio sync` sends it") from None
