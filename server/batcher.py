"""Dynamic micro-batching: concurrent requests share one forward pass.

A lone request runs at once (no added latency). While a batch runs, new requests queue up and form
the next batch; under load (the last batch had company) the batcher also waits up to
max_queue_delay for stragglers, as Triton's dynamic batcher does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from weldstream.errors import ModelUnavailable, Overloaded
from weldstream.server.errors import DeadlineExpired
from weldstream.server.inference import Prediction, predict_batch
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import ModelSlot
from weldstream.server.rig_normalisation import VERSION_STATISTICS, Served

# (rig label, version) -> the statistics that version normalises that rig's scans with
StatisticsOf = Callable[[str, int], Served]

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """One request's scans: they always run in the same forward pass, so they share one version."""

    scans: list[np.ndarray]
    future: asyncio.Future[list[Prediction]]
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    pixels: int
    regions: bool = True  # find defect regions for these scans
    rig: str = ""  # the rig's label (bounded, see RigLabels); its statistics are looked up per batch
    enqueued: float = field(default_factory=time.perf_counter)


def pixels_of(scans: list[np.ndarray]) -> int:
    return sum(int(scan.shape[-2]) * int(scan.shape[-1]) for scan in scans)


class Batcher:
    """Owns the inference worker task and the single thread the model runs on.

    Memory is bounded by pixels, not by request count: scans accepted and not yet answered hold at most
    max_queue_pixels (a request that does not fit is refused at once), and one forward pass takes at most
    max_batch_pixels (a larger request runs alone). A request whose deadline has passed is dropped before
    its forward pass.
    """

    def __init__(self, slot: ModelSlot, metrics: ServerMetrics, max_batch_size: int, max_queue_delay_s: float,
                 max_queue: int, max_batch_pixels: int, max_queue_pixels: int,
                 statistics_of: StatisticsOf | None = None) -> None:
        self._slot = slot
        self._statistics_of = statistics_of
        self._metrics = metrics
        self._max_batch = max_batch_size
        self._delay = max_queue_delay_s
        self._max_queue = max_queue
        self._max_batch_pixels = max_batch_pixels
        self._max_queue_pixels = max_queue_pixels
        self._waiting: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._held_scans = 0  # accepted and not yet answered (waiting or in the running batch)
        self._held_pixels = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def submit(self, scan: np.ndarray, deadline: float | None = None, regions: bool = True,
                     rig: str = "") -> Prediction:
        """Queue one scan and wait for its prediction."""
        return (await self.submit_many([scan], deadline, regions, rig))[0]

    async def submit_many(self, scans: list[np.ndarray], deadline: float | None = None,
                          regions: bool = True, rig: str = "") -> list[Prediction]:
        """Queue one request's scans; they run in one forward pass, on one version. ``regions``: whether
        the request wants defect regions (extracted on the host, so only for the scans that ask); ``rig``:
        the rig's label, whose normalisation statistics (for the version the batch runs on) it gets."""
        if self._closing:
            raise ModelUnavailable("server is shutting down")
        self.check_alive()
        pixels = pixels_of(scans)
        if (self._held_scans + len(scans) > self._max_queue
                or self._held_pixels + pixels > self._max_queue_pixels):
            raise Overloaded(f"inference queue is full ({self._held_scans} scans, {self._held_pixels} pixels "
                             f"of at most {self._max_queue} and {self._max_queue_pixels})")
        pending = _Pending(list(scans), asyncio.get_running_loop().create_future(), deadline, pixels, regions, rig)
        self._hold(pending, +1)
        pending.future.add_done_callback(lambda _: self._hold(pending, -1))
        self._waiting.append(pending)
        self._arrived.set()
        return await pending.future

    def _hold(self, pending: _Pending, sign: int) -> None:
        self._held_scans += sign * len(pending.scans)
        self._held_pixels += sign * pending.pixels
        self._metrics.queue_depth.set(self._held_scans)
        self._metrics.queue_pixels.set(self._held_pixels)

    def check_alive(self) -> None:
        """Surface a crashed worker to callers instead of letting requests hang."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            raise ModelUnavailable(f"inference worker stopped: {self._task.exception()!r}")

    async def close(self) -> None:
        """Finish what is queued, then stop the worker and its thread."""
        self._closing = True
        while self._held_scans:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def _statistics(self, rig: str, version: int) -> Served:
        return self._statistics_of(rig, version) if self._statistics_of is not None and rig else VERSION_STATISTICS

    def _fits(self, batch_scans: int, batch_pixels: int, pending: _Pending) -> bool:
        return (batch_scans + len(pending.scans) <= self._max_batch
                and batch_pixels + pending.pixels <= self._max_batch_pixels)

    async def _collect(self, had_company: bool) -> list[_Pending]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._waiting.popleft()]  # the first request always runs, however large
        scans, pixels = len(batch[0].scans), batch[0].pixels
        deadline = time.perf_counter() + (self._delay if had_company else 0.0)
        while True:
            if self._waiting:
                if not self._fits(scans, pixels, self._waiting[0]):
                    break
                batch.append(self._waiting.popleft())
                scans, pixels = scans + len(batch[-1].scans), pixels + batch[-1].pixels
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return batch

    def _drop_expired(self, batch: list[_Pending]) -> list[_Pending]:
        """Requests still awaited; those past their deadline are answered DEADLINE_EXCEEDED unrun."""
        now = time.monotonic()
        live = []
        for pending in batch:
            if pending.future.done():  # cancelled by its caller
                continue
            if pending.deadline is not None and pending.deadline <= now:
                self._metrics.expired.inc(len(pending.scans))
                pending.future.set_exception(DeadlineExpired("the deadline passed while the request was queued"))
                continue
            live.append(pending)
        return live

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        had_company = False
        while True:
            batch = await self._collect(had_company)
            had_company = len(batch) > 1
            live = self._drop_expired(batch)
            if not live:
                continue
            scans = [scan for pending in live for scan in pending.scans]
            regions = [pending.regions for pending in live for _ in pending.scans]
            self._metrics.batch_size.observe(len(scans))
            started = time.perf_counter()
            try:
                with self._slot.lease() as loaded:  # the whole batch runs on this version
                    statistics = [self._statistics(pending.rig, loaded.version) for pending in live
                                  for _ in pending.scans]
                    predictions = await loop.run_in_executor(self._executor, predict_batch, loaded, scans,
                                                             regions, statistics)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the worker
                log.exception("inference failed for a batch of %d", len(scans))
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            self._metrics.inference_seconds.observe(time.perf_counter() - started)
            for prediction in predictions:
                self._metrics.normalisation_scans.labels(prediction.normalisation.kind, prediction.backend).inc()
            for pending in live:
                mine, predictions = predictions[:len(pending.scans)], predictions[len(pending.scans):]
                if not pending.future.done():
                    pending.future.set_result(mine)
