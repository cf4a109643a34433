"""Hot swap: bring newer versions from the weight store into the model slot without stopping inference.

Two triggers feed one loop: announcements on Kafka (`weld.models`, immediate) and a periodic poll of
the weight store (the fallback when Kafka is down or a message was missed). The store says what to
serve: an operator's pin (held, even when it is older than the live version) or else the newest
version. Loading, checksum verification and warm-up happen beside the live model on the low-priority
loader thread, into the module the previous swap retired; only then is the slot swapped. A store that does
not answer (an unreachable bucket, an unreadable directory) never stops serving: the live version stays, and
polls back off until it answers (see store_health).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from weldstream.errors import CorruptVersion
from weldstream.s3_client import StoreUnavailable
from weldstream.server.config import ServerConfig
from weldstream.server.loader import load_version, loader_thread
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import LoadedModel, ModelSlot
from weldstream.server.store_health import StoreHealth
from weldstream.stores import VersionStore

log = logging.getLogger(__name__)


class Swapper:
    def __init__(self, cfg: ServerConfig, store: VersionStore, slot: ModelSlot, metrics: ServerMetrics,
                 on_swap: Callable[[], Awaitable[None]], store_health: StoreHealth | None = None,
                 on_store: Callable[[], Awaitable[None]] | None = None,
                 prepare: Callable[[LoadedModel], None] | None = None) -> None:
        self._cfg = cfg
        self._store = store
        self._slot = slot
        self._metrics = metrics
        self._on_swap = on_swap
        # on_store: called when the store stops or starts answering again.
        self.store_health = store_health or StoreHealth(metrics, cfg.poll_interval_s, str(store.root))
        self._on_store = on_store
        # prepare: on the loader thread, after a version is loaded and checked, before it goes live (the
        # rigs' normalisation statistics re-estimated with its weights).
        self._prepare = prepare
        self._wake = asyncio.Event()
        self._refused: set[int] = set()
        self._loader = loader_thread()
        # Started here, on the event loop's thread, so it runs at normal priority: an ONNX Runtime session
        # built on it gets worker threads that compete with requests as equals, not at the loader's niceness.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend-builder")
        self._builder.submit(lambda: None)
        self._tasks: list[asyncio.Task[None]] = []
        self._failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._swap_loop(), name="swap-loop"))
        if self._cfg.kafka:
            from weldstream.announcements import follow_announcements

            self._tasks.append(asyncio.create_task(
                follow_announcements(self._cfg.kafka, self._cfg.models_topic, self.notify, self._cfg.kafka_security),
                name="follow-models"))
        for task in self._tasks:
            task.add_done_callback(self._check_task)

    def notify(self, announcement: object = None) -> None:
        """Something new may be in the store; look now instead of at the next poll."""
        self._wake.set()

    async def wait_failed(self) -> None:
        """Completes (raising) only if a background task died unexpectedly."""
        await self._failed

    def _check_task(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._failed.done():
            return
        if task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
            self._failed.set_exception(task.exception())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._loader.shutdown(wait=True)
        self._builder.shutdown(wait=True)

    async def _swap_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.store_health.next_poll_s())
            except TimeoutError:
                pass
            self._wake.clear()
            await self.swap_to_served()

    async def swap_to_served(self) -> bool:
        """Serve what the store says (the pinned version if an operator pinned one, else the newest): load it
        beside the live one and swap to it; True if it went live.

        A damaged version (CorruptVersion) is refused for good. Any other load error (a file not there
        yet, a download cut, CUDA out of memory) is transient: the version is tried again at the next poll or
        announcement. A store that does not say what to serve leaves the live version in place.
        """
        try:
            pinned, latest = await asyncio.to_thread(lambda: (self._store.pinned(), self._store.latest()))
        except OSError as exc:  # StoreUnavailable, or a directory store's I/O error
            await self._record_store(exc)
            return False
        await self._record_store(None)
        target = pinned if pinned is not None else latest
        live = self._slot.current()
        self._metrics.versions_behind.set(max(0, (latest or 0) - live.version))
        if target is None or target in self._refused or (target == live.version and not live.untrained):
            return False
        if pinned is None and target < live.version and not live.untrained:
            return False  # the store lost versions it had; never move back unless told to
        started = time.perf_counter()
        try:
            candidate = await asyncio.get_running_loop().run_in_executor(self._loader, self._load, target, live)
        except CorruptVersion as exc:
            self._refused.add(target)
            self._metrics.swaps.labels("failed").inc()
            log.error("refusing version %d for good: %s", target, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - transient; the next poll tries again
            self._metrics.swaps.labels("retry").inc()
            if isinstance(exc, StoreUnavailable):
                self._metrics.store_errors.inc()
            log.warning("could not load version %d yet (%r); will try again", target, exc)
            return False
        self._metrics.swap_seconds.observe(time.perf_counter() - started)
        if not self._slot.swap(candidate, older=pinned is not None):
            self._slot.give_back(candidate)  # its module can hold the next version instead
            self._metrics.swaps.labels("stale").inc()
            return False
        self._metrics.swaps.labels("swapped").inc()
        self._metrics.record_backend(self._cfg.backend, candidate.runner.name, candidate.backend_refused)
        self._metrics.versions_behind.set(max(0, latest - candidate.version))
        label_time = (candidate.manifest.metrics.get("label_time_median", 0.0) if candidate.manifest else 0.0)
        if label_time > 0:
            self._metrics.freshness_seconds.observe(max(0.0, time.time() - label_time))
        await self._on_swap()
        return True

    async def _record_store(self, error: OSError | None) -> None:
        """Record whether the store answered a poll; tell the server when that changes."""
        changed = self.store_health.failed(error) if error is not None else self.store_health.answered()
        if changed and self._on_store is not None:
            await self._on_store()

    def _run_normal(self, build: Callable[[], object]) -> object:
        return self._builder.submit(build).result()

    def _load(self, version: int, live: LoadedModel) -> LoadedModel:
        """On the loader thread: the new version in the retired module (or a new one), checked and warm."""
        spare = self._slot.take_spare()
        try:
            loaded = load_version(self._store, version, live.device, reuse=spare,
                                  backend=self._cfg.backend_settings, run_normal=self._run_normal)
            if self._prepare is not None:
                self._prepare(loaded)
            return loaded
        except BaseException:
            if spare is not None:
                self._slot.give_back(spare)
            raise
