"""The native weldstream.v1.Segmenter service: masks, regions and model lineage for inspection rigs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from weldstream.codec import DTYPES, ENCODINGS, fill_tensor
from weldstream.server.batcher import Batcher
from weldstream.server.config import ServerConfig
from weldstream.server.errors import status_for, unary
from weldstream.server.inference import Prediction
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import LoadedModel, ModelSlot
from weldstream.server.requests import checked_rig, deadline_of, metadata_rig, rig_of, scan_from_request
from weldstream.server.watch import ScanWatch
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc

STREAM_WINDOW = 8


def build_response(scan_id: str, prediction: Prediction, started: float,
                   with_confidence: bool, drift: float = 0.0) -> segmenter_pb2.SegmentResponse:
    """The response names the version that made the mask and that version's class names."""
    classes = prediction.classes
    response = segmenter_pb2.SegmentResponse(scan_id=scan_id, model_version=prediction.version,
                                             doubt=prediction.doubt, drift=drift)
    response.normalisation.source = prediction.normalisation.source
    response.normalisation.scans = prediction.normalisation.scans
    if prediction.normalisation.gain is not None:
        response.normalisation.gain_domain = prediction.normalisation.gain.domain
        response.normalisation.gain_db = prediction.normalisation.gain.span_db
        response.normalisation.gain_scans = prediction.normalisation.gain_scans
    fill_tensor(response.mask, prediction.mask)
    for class_id, fraction in enumerate(prediction.fractions):
        response.class_fractions.add(class_id=class_id, class_name=classes[class_id], fraction=float(fraction))
    for region in prediction.regions:
        response.regions.add(
            class_id=region.class_id,
            class_name=classes[region.class_id],
            bbox=segmenter_pb2.BoundingBox(x=region.x, y=region.y, width=region.width, height=region.height),
            area_px=region.area_px,
            mean_confidence=region.mean_confidence,
            doubt=region.doubt,
        )
    if with_confidence:
        fill_tensor(response.confidence, prediction.confidence)
    response.server_latency_ms = (time.perf_counter() - started) * 1000
    return response


def wants_regions(request: segmenter_pb2.SegmentRequest) -> bool:
    """Regions only when the request asks for them (``return_regions``)."""
    return request.return_regions


def model_info(loaded: LoadedModel, cfg: ServerConfig) -> segmenter_pb2.ModelInfo:
    info = segmenter_pb2.ModelInfo(
        name=cfg.model_name,
        version=loaded.version,
        untrained=loaded.untrained,
        classes=list(loaded.config.classes),
        architecture=loaded.config.architecture,
        encoder=loaded.config.encoder,
        input_spec=segmenter_pb2.InputSpec(
            dtypes=list(DTYPES),
            channels=loaded.config.in_channels,
            max_height=cfg.max_side,
            max_width=cfg.max_side,
            stride=loaded.config.stride,
            encodings=list(ENCODINGS),
        ),
    )
    manifest = loaded.manifest
    if manifest is not None:
        info.sha256 = manifest.sha256
        lineage = info.lineage
        lineage.parent_version = manifest.parent_version
        lineage.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(manifest.created_at))
        lineage.strategy = manifest.strategy
        for offset in manifest.offsets:
            lineage.offsets.add(topic=offset["topic"], partition=offset["partition"], offset=offset["offset"])
        for domain, score in sorted(manifest.scores.items()):
            lineage.scores.add(domain=domain, miou=score.get("miou", 0.0), dice=score.get("dice", 0.0),
                               samples=int(score.get("samples", 0)))
    return info


class SegmenterServicer(segmenter_pb2_grpc.SegmenterServicer):
    def __init__(self, cfg: ServerConfig, slot: ModelSlot, batcher: Batcher, metrics: ServerMetrics,
                 watch: ScanWatch) -> None:
        self._cfg = cfg
        self._slot = slot
        self._batcher = batcher
        self._watch = watch
        self.metrics = metrics
        self.max_send_bytes = cfg.max_send_bytes

    @unary
    async def Segment(self, request: segmenter_pb2.SegmentRequest,
                      context: grpc.aio.ServicerContext) -> segmenter_pb2.SegmentResponse:
        started = time.perf_counter()
        rig = rig_of(request.rig_id, context)
        scan = scan_from_request(request, self._cfg.max_side, self._slot.current().config.in_channels)
        [prediction] = await self._batcher.submit_many([scan], deadline_of(context), wants_regions(request),
                                                       self._watch.rig_label(rig))
        drift = self._watch.observe(request.scan_id, rig, scan, prediction)
        return build_response(request.scan_id, prediction, started, request.return_confidence, drift.score)

    @unary
    async def GetModel(self, request: segmenter_pb2.GetModelRequest,
                         context: grpc.aio.ServicerContext) -> segmenter_pb2.ModelInfo:
        return model_info(self._slot.current(), self._cfg)

    async def _answer_frame(self, request: segmenter_pb2.SegmentRequest,
                            stream_rig: str) -> segmenter_pb2.SegmentResponse:
        """One stream frame; failures become an in-band `error` so the stream goes on."""
        started = time.perf_counter()
        self.metrics.inflight.inc()
        code = "OK"
        try:
            rig = checked_rig(request.rig_id or stream_rig)
            scan = scan_from_request(request, self._cfg.max_side, self._slot.current().config.in_channels)
            prediction = await self._batcher.submit(scan, regions=wants_regions(request),
                                                    rig=self._watch.rig_label(rig))
            drift = self._watch.observe(request.scan_id, rig, scan, prediction)
            return build_response(request.scan_id, prediction, started, request.return_confidence, drift.score)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:  # noqa: BLE001 - reported in-band for this frame
            status, message = status_for(exc)
            code = status.name
            return segmenter_pb2.SegmentResponse(
                scan_id=request.scan_id, error=segmenter_pb2.SegmentError(code=code, message=message))
        finally:
            self.metrics.inflight.dec()
            self.metrics.requests.labels("SegmentStream", code).inc()
            self.metrics.request_seconds.labels("SegmentStream").observe(time.perf_counter() - started)

    async def SegmentStream(self, request_iterator: AsyncIterator[segmenter_pb2.SegmentRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[segmenter_pb2.SegmentResponse]:
        """Frames answered in the order they came. Up to STREAM_WINDOW frames are in flight at once, so
        a rig streaming faster than one forward pass gets its frames batched together."""
        window: asyncio.Queue[asyncio.Task[segmenter_pb2.SegmentResponse] | None] = asyncio.Queue(STREAM_WINDOW)
        stream_rig = metadata_rig(context)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.put(asyncio.create_task(self._answer_frame(request, stream_rig)))
            finally:
                await window.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            while not window.empty():
                pending = window.get_nowait()
                if pending is not None:
                    pending.cancel()
