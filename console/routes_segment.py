"""Try a scan (anyone logged in): one PNG, TIFF or DICONDE/DICOM file segmented by the live server.

The file is read into memory up to MAX_SCAN_BYTES, its header sized against the server's pixel limit
before it is decoded, and sent as a raw tensor (what the console decoded is what the model sees, DICOM
included). The answer's pictures stay fetchable for the last KEEP tries.
"""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from pathlib import PurePath
from typing import Annotated

import grpc
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from weldstream.codec import array_to_tensor, tensor_to_array
from weldstream.console.accounts import Account
from weldstream.console.auth import require, services
from weldstream.console.form_stream import read_form
from weldstream.console.imaging import display_png, png
from weldstream.console.scan_files import read_scan
from weldstream.console.segment_results import Tried, TriedScans
from weldstream.errors import InvalidInput
from weldstream.v1 import segmenter_pb2, tensor_pb2

router = APIRouter(prefix="/api/segment", tags=["try a scan"])
MAX_SCAN_BYTES = 64 << 20
KEEP = 50
TIMEOUT_S = 60.0
RESULTS = "tried_scans"  # Services.extras
RIG_ID = "console"
PNG_HEADERS = {"Cache-Control": "private, max-age=3600"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAVAILABLE: 503,
           grpc.StatusCode.RESOURCE_EXHAUSTED: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


@router.post("")
async def segment(request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> dict:
    """multipart ``file``: the live model's mask, doubt and regions for it (rig ``console``, so the
    server's per-rig doubt, drift and review queue tell tried scans from a rig's)."""
    svc = services(request)
    sink = io.BytesIO()
    try:
        form = await read_form(request, sink, MAX_SCAN_BYTES)
        scan = await asyncio.to_thread(read_scan, sink.getvalue())
    except InvalidInput as exc:
        raise HTTPException(400, str(exc)) from None
    del sink
    scan_id = _UNSAFE.sub("_", PurePath(form.filename).stem)[:96] or "scan"
    call = segmenter_pb2.SegmentRequest(scan_id=scan_id, image=tensor_pb2.Image(tensor=array_to_tensor(scan)),
                                        return_regions=True, rig_id=RIG_ID)
    target = svc.cfg.connection.server
    try:
        answer = await svc.segmenter().Segment(call, timeout=TIMEOUT_S, metadata=svc.connection.metadata())
    except grpc.aio.AioRpcError as err:
        status = _STATUS.get(err.code(), 502)
        raise HTTPException(status, f"the inference server at {target} answered {err.code().name}: "
                                    f"{err.details()}") from None
    except OSError as exc:  # the token file cannot be read
        raise HTTPException(503, f"cannot reach the inference server at {target} ({exc})") from None
    mask = tensor_to_array(answer.mask, "mask")
    tried = await asyncio.to_thread(lambda: Tried(display_png(scan), png(mask)))
    key = uuid.uuid4().hex
    _results(request).put(key, tried)
    return _summary(key, answer, mask)


@router.get("/{key}/scan.png")
async def scan_png(key: str, request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> Response:
    return Response(_tried(request, key).scan_png, media_type="image/png", headers=PNG_HEADERS)


@router.get("/{key}/mask.png")
async def mask_png(key: str, request: Request, _: Annotated[Account, Depends(require("viewer"))]) -> Response:
    """The server's mask as class indices, one byte a pixel (0 background .. 4 inclusion)."""
    return Response(_tried(request, key).mask_png, media_type="image/png", headers=PNG_HEADERS)


def _summary(key: str, answer: segmenter_pb2.SegmentResponse, mask: np.ndarray) -> dict:
    regions = [{"class_id": r.class_id, "class_name": r.class_name, "x": r.bbox.x, "y": r.bbox.y,
                "width": r.bbox.width, "height": r.bbox.height, "area_px": r.area_px,
                "mean_confidence": round(float(r.mean_confidence), 4), "doubt": round(float(r.doubt), 4)}
               for r in answer.regions]
    return {"id": key, "scan_id": answer.scan_id, "version": answer.model_version,
            "doubt": round(float(answer.doubt), 4), "drift": round(float(answer.drift), 4),
            "width": int(mask.shape[1]), "height": int(mask.shape[0]), "regions": regions,
            "class_fractions": {c.class_name: c.fraction for c in answer.class_fractions},
            "server_latency_ms": round(answer.server_latency_ms, 1)}


def _results(request: Request) -> TriedScans:
    return services(request).extras.setdefault(RESULTS, TriedScans(KEEP))


def _tried(request: Request, key: str) -> Tried:
    tried = _results(request).get(key)
    if tried is None:
        raise HTTPException(404, f"no tried scan {key!r}: only the last {KEEP} are kept")
    return tried
