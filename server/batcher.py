"""Dynamic micro-batching: concurrent requests share one forward pass.

A lone request runs at once (no added latency). While a batch runs, new requests queue up and form
the next batch; under load (the last batch had company) the batcher also waits up to
max_queue_delay for stragglers, as Triton's dynamic batcher does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from weldstream.errors import ModelUnavailable, Overloaded
from weldstream.server.inference import Prediction, predict_batch
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import ModelSlot

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    scan: np.ndarray
    future: asyncio.Future[Prediction]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Owns the inference worker task and the single thread the model runs on."""

    def __init__(self, slot: ModelSlot, metrics: ServerMetrics, max_batch_size: int,
                 max_queue_delay_s: float, max_queue: int) -> None:
        self._slot = slot
        self._metrics = metrics
        self._max_batch = max_batch_size
        self._delay = max_queue_delay_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def submit(self, scan: np.ndarray) -> Prediction:
        """Queue one scan and wait for its prediction."""
        if self._closing:
            raise ModelUnavailable("server is shutting down")
        self.check_alive()
        pending = _Pending(scan, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"inference queue is full ({self._queue.maxsize} scans)") from None
        self._metrics.queue_depth.set(self._queue.qsize())
        return await pending.future

    def check_alive(self) -> None:
        """Surface a crashed worker to callers instead of letting requests hang."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            raise ModelUnavailable(f"inference worker stopped: {self._task.exception()!r}")

    async def close(self) -> None:
        """Finish what is queued, then stop the worker and its thread."""
        self._closing = True
        while not self._queue.empty():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def _collect(self, had_company: bool) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + (self._delay if had_company else 0.0)
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        had_company = False
        while True:
            batch = await self._collect(had_company)
            had_company = len(batch) > 1
            self._metrics.queue_depth.set(self._queue.qsize())
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            self._metrics.batch_size.observe(len(live))
            started = time.perf_counter()
            try:
                with self._slot.lease() as loaded:  # the whole batch runs on this version
                    predictions = await loop.run_in_executor(
                        self._executor, predict_batch, loaded, [p.scan for p in live]
                    )
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the worker
                log.exception("inference failed for a batch of %d", len(live))
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            self._metrics.inference_seconds.observe(time.perf_counter() - started)
            for pending, prediction in zip(live, predictions, strict=True):
                if not pending.future.done():
                    pending.future.set_result(prediction)
