"""KServe v2 / Open Inference Protocol over gRPC, so Triton and KServe clients work unmodified."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from collections.abc import Callable

import grpc
import numpy as np

from weldstream.errors import InvalidInput, ModelUnavailable
from weldstream.kserve import grpc_predict_v2_pb2 as pb
from weldstream.kserve import grpc_predict_v2_pb2_grpc as pb_grpc
from weldstream.server.batcher import Batcher
from weldstream.server.config import ServerConfig
from weldstream.server.errors import NotFound, unary
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import ModelSlot
from weldstream.server.requests import INPUT_NAME, deadline_of, infer_rig, rig_of, scans_from_infer
from weldstream.server.watch import ScanWatch

SERVER_NAME = "weldstream"
SERVER_VERSION = "0.1.0"
# "doubt" (FP32 [N], one score per scan, see server/doubt.py) comes last: clients that read outputs by
# name (tritonclient's as_numpy) ignore it.
OUTPUTS = ("mask", "confidence", "doubt")
# An extension output (BYTES, one JSON list of regions per scan, each with its doubt), returned only when a
# request names it or sets the parameter regions=true; left out of ModelMetadata so clients that ask for
# every listed output pay for no region extraction.
REGIONS = "regions"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """`serving`: started and not draining; `ready()`: what ServerReady and ModelReady report (with
    --ready-when-trained, only once a trained version is live)."""

    def __init__(self, cfg: ServerConfig, slot: ModelSlot, batcher: Batcher, metrics: ServerMetrics,
                 serving: asyncio.Event, ready: Callable[[], bool], watch: ScanWatch) -> None:
        self._cfg = cfg
        self._watch = watch
        self._slot = slot
        self._batcher = batcher
        self._serving = serving
        self._ready = ready
        self.metrics = metrics
        self.max_send_bytes = cfg.max_send_bytes

    def _check_model(self, name: str, version: str) -> None:
        if name != self._cfg.model_name:
            raise NotFound(f"model {name!r} is not served here; this server serves {self._cfg.model_name!r}")
        if version and version != str(self._slot.current().version):
            raise NotFound(f"version {version} is not live; the live version is {self._slot.current().version}")

    @unary
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return pb.ServerLiveResponse(live=True)

    @unary
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        return pb.ServerReadyResponse(ready=self._ready())

    @unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        self._check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=self._ready())

    @unary
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        self._check_model(request.name, request.version)
        Tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self._cfg.model_name,
            versions=[str(self._slot.current().version)],
            platform="pytorch",
            inputs=[Tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, 1, -1, -1])],
            outputs=[Tensor(name="mask", datatype="UINT8", shape=[-1, -1, -1]),
                     Tensor(name="confidence", datatype="FP32", shape=[-1, -1, -1]),
                     Tensor(name="doubt", datatype="FP32", shape=[-1])],
        )

    @unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        if not self._serving.is_set():
            raise ModelUnavailable("model is not ready")
        if request.model_version and request.model_version != str(self._slot.current().version):
            raise NotFound(f"version {request.model_version} is not live")
        wanted = [o.name for o in request.outputs] or list(OUTPUTS)
        for index, name in enumerate(wanted):
            if name not in (*OUTPUTS, REGIONS):
                raise InvalidInput(f"outputs[{index}].name", f"{name!r} is not one of {[*OUTPUTS, REGIONS]}")
        if regions_parameter(request) and REGIONS not in wanted:
            wanted.append(REGIONS)
        rig = rig_of(infer_rig(request), context)
        scans = scans_from_infer(request, self._cfg.model_name, self._cfg.max_side)
        # one unit for the batcher: every scan of the request runs on the same version
        predictions = await self._batcher.submit_many(scans, deadline_of(context), REGIONS in wanted,
                                                      self._watch.rig_label(rig))
        for index, (scan, prediction) in enumerate(zip(scans, predictions, strict=True)):
            scan_id = f"{request.id}/{index}" if request.id else ""
            self._watch.observe(scan_id, rig, scan, prediction)
        version = predictions[0].version
        response = pb.ModelInferResponse(model_name=self._cfg.model_name, model_version=str(version), id=request.id)
        # which BatchNorm statistics normalised the scans (one rig per request, so one answer)
        response.parameters["normalisation"].string_param = predictions[0].normalisation.source
        response.parameters["normalisation_scans"].int64_param = predictions[0].normalisation.scans
        gain = predictions[0].normalisation.gain
        if gain is not None:
            response.parameters["normalisation_gain_domain"].string_param = gain.domain
            response.parameters["normalisation_gain_db"].double_param = round(gain.span_db, 2)
        height, width = predictions[0].mask.shape
        same_size = all(p.mask.shape == (height, width) for p in predictions)
        if not same_size:  # cannot happen for one input tensor; guards the stacking below
            raise InvalidInput("inputs", "scans in one request must share H and W")
        for name in wanted:
            if name == REGIONS:
                elements = [json.dumps([dataclasses.asdict(r) for r in p.regions]).encode() for p in predictions]
                response.outputs.add(name=name, datatype="BYTES", shape=[len(elements)])
                # KServe's BYTES layout: each element is a 4-byte little-endian length, then its bytes
                response.raw_output_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in elements))
                continue
            if name == "doubt":
                doubts = np.array([p.doubt for p in predictions], dtype="<f4")
                response.outputs.add(name=name, datatype="FP32", shape=[len(doubts)])
                response.raw_output_contents.append(doubts.tobytes())
                continue
            arrays = [p.mask if name == "mask" else p.confidence for p in predictions]
            datatype = "UINT8" if name == "mask" else "FP32"
            response.outputs.add(name=name, datatype=datatype, shape=[len(arrays), height, width])
            # one copy of each scan's pixels, straight into the response
            response.raw_output_contents.append(b"".join(a.astype(np.uint8 if name == "mask" else "<f4", copy=False)
                                                         .tobytes() for a in arrays))
        return response


def regions_parameter(request: pb.ModelInferRequest) -> bool:
    """The request parameter ``regions`` (bool, or a string such as "true") asks for the regions output."""
    if "regions" not in request.parameters:
        return False
    parameter = request.parameters["regions"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind == "string_param":
        return parameter.string_param.strip().lower() in ("1", "true", "yes", "on")
    return bool(getattr(parameter, kind)) if kind else False
