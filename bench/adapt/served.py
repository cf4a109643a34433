"""A real ``InferenceServer`` on loopback serving one version from a directory weight store, and a rig's client:
scans go over gRPC ``Segment`` with a rig id, masks and the statistics that normalised them come back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from weldstream.codec import array_to_tensor, tensor_to_array
from weldstream.limits import response_bytes
from weldstream.server.app import InferenceServer
from weldstream.server.config import ServerConfig
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2

CALL_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Answer:
    """One served scan: its mask and the BatchNorm statistics it was normalised with."""

    mask: np.ndarray
    source: str  # "rig" or "version"
    scans: int  # how many of the rig's scans its statistics came from (0 for "version")
    version: int
    drift: float  # the rig's drift score after this scan
    gain_db: float = 0.0  # span of the gain curve its scan was corrected by (0: none)


class ServedModel:
    """``async with ServedModel(store_dir, state_dir, ...) as served:`` a server of its own (eager torch, no
    Kafka, no metrics port) and a channel to it. Its rigs' statistics are kept in ``state_dir``, which should
    be empty: each server starts with no rig known."""

    def __init__(self, store_dir: Path, state_dir: Path, *, rig_normalisation: bool = True,
                 max_batch_size: int = 8, threads: int = 1, in_flight: int = 8) -> None:
        self.cfg = ServerConfig(model_dir=store_dir, host="127.0.0.1", grpc_port=0, metrics_port=-1, kafka=None,
                                poll_interval_s=3600.0, backend="torch", threads=threads, grace_s=5.0,
                                max_batch_size=max_batch_size, rig_normalisation=rig_normalisation,
                                rig_state_dir=state_dir)
        self.in_flight = in_flight
        self.server: InferenceServer | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: segmenter_pb2_grpc.SegmenterStub | None = None
        self._sent = 0

    async def __aenter__(self) -> ServedModel:
        self.server = InferenceServer(self.cfg)
        await self.server.start()
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}",
                                                  options=[("grpc.max_receive_message_length", response_bytes())])
        self._stub = segmenter_pb2_grpc.SegmenterStub(self._channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self.server is not None:
            await self.server.stop()

    async def segment(self, rig: str, image: np.ndarray) -> Answer:
        assert self._stub is not None, "use ServedModel as an async context manager"
        self._sent += 1
        request = segmenter_pb2.SegmentRequest(scan_id=f"{rig}/{self._sent}", rig_id=rig,
                                               image=tensor_pb2.Image(tensor=array_to_tensor(image)))
        reply = await self._stub.Segment(request, timeout=CALL_TIMEOUT_S, wait_for_ready=True)
        return Answer(tensor_to_array(reply.mask, "mask"), reply.normalisation.source or "version",
                      int(reply.normalisation.scans), int(reply.model_version), float(reply.drift),
                      float(reply.normalisation.gain_db) if reply.normalisation.gain_domain else 0.0)

    async def send(self, scans: list[tuple[str, np.ndarray]]) -> list[Answer]:
        """(rig, image) pairs sent with up to ``in_flight`` calls at once (so the server batches them), in
        order of sending; answers in the same order."""
        gate = asyncio.Semaphore(self.in_flight)

        async def one(rig: str, image: np.ndarray) -> Answer:
            async with gate:
                return await self.segment(rig, image)
        return list(await asyncio.gather(*(one(rig, image) for rig, image in scans)))

    async def settle(self) -> None:
        """Until every scan served so far is measured into its rig's statistics."""
        assert self.server is not None
        await asyncio.to_thread(self.server.rig_norm.settle, SETTLE_TIMEOUT_S)

    def scans(self, rig: str) -> int:
        """How many scans the server's statistics of ``rig`` come from (0: it serves the version's)."""
        assert self.server is not None
        return int(self.server.rig_norm.scans(rig))

    def decision(self, rig: str) -> str:
        """What the server decided for ``rig``: pending, keep (the version's statistics), gain (the version's, on
        scans corrected by the rig's gain curve) or adapt ('' if this server does not say)."""
        assert self.server is not None
        decide = getattr(self.server.rig_norm, "decision", None)
        decision = str(decide(rig)) if decide is not None else ""
        if decision == "keep" and self.server.rig_norm.statistics(rig, self.server.slot.current().version).gain:
            return "gain"
        return decision
