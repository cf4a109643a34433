"""Rigs' view of a fleet: one client per replica calling Segment without pause, noting which version answered.

A version has reached the fleet when every replica has answered a call with it; that, not a replica's own
gauge, is what a rig sees. Used by the store-outage fault (no call may fail) and by ``bench store`` (how soon a
published version is answered everywhere).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from weldstream.codec import array_to_tensor
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2

CALL_TIMEOUT_S = 120.0  # a replica still starting is waited for (wait_for_ready), not failed


class ReplicaCalls:
    """``async with ReplicaCalls(ports, pause_s):`` calls each replica one call after another, ``pause_s`` apart
    (which leaves the replicas' low-priority loaders some CPU), until the block ends."""

    def __init__(self, ports: list[int], pause_s: float, side: int = 64) -> None:
        image = np.zeros((side, side), np.uint8)
        self.request = segmenter_pb2.SegmentRequest(scan_id="probe",
                                                    image=tensor_pb2.Image(tensor=array_to_tensor(image)))
        self.pause_s = pause_s
        self.answered = 0
        self.failures: list[str] = []
        # replica port -> version -> time.monotonic() of its first answer with that version
        self.first_seen: dict[int, dict[int, float]] = {port: {} for port in ports}
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def reached(self, version: int) -> float | None:
        """When the last replica first answered with ``version`` (time.monotonic()); None until every one has."""
        times = [seen.get(version) for seen in self.first_seen.values()]
        return None if None in times else max(times)

    async def _call(self, port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            while not self._done.is_set():
                try:
                    reply = await stub.Segment(self.request, wait_for_ready=True, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as err:
                    self.failures.append(f"{port} {err.code().name}: {err.details()}"[:200])
                else:
                    self.answered += 1
                    self.first_seen[port].setdefault(reply.model_version, time.monotonic())
                await asyncio.sleep(self.pause_s)

    async def __aenter__(self) -> ReplicaCalls:
        self._tasks = [asyncio.create_task(self._call(port)) for port in self.first_seen]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        await asyncio.gather(*self._tasks)
