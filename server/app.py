"""The server's whole lifecycle in one place: load the model, start gRPC + metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from weldstream.errors import CorruptVersion
from weldstream.kserve import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from weldstream.model import ModelConfig, resolve_device
from weldstream.registry import best_effort, open_configured
from weldstream.server.backend_choice import fastest_backend
from weldstream.server.backends import BackendSettings
from weldstream.server.batcher import Batcher
from weldstream.server.config import ServerConfig
from weldstream.server.draining import Drain
from weldstream.server.drift import DriftConfig
from weldstream.server.interceptors import RequestMetrics
from weldstream.server.kserve_service import InferenceServicer
from weldstream.server.loader import fresh_model, load_version, with_backend
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import LoadedModel, ModelSlot
from weldstream.server.review import ReviewPolicy, ReviewPublisher
from weldstream.server.rig_normalisation import RigNormaliser
from weldstream.server.security import BearerAuth, read_tokens, server_credentials
from weldstream.server.segmenter_service import SegmenterServicer
from weldstream.server.store_health import STORE_SERVICE, StoreHealth
from weldstream.server.swapper import Swapper
from weldstream.server.watch import ScanWatch
from weldstream.signing import read_key
from weldstream.stores import VersionStore, configured_store
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc

log = logging.getLogger(__name__)
# A health service name that answers SERVING whenever the process runs, for liveness probes: with
# --ready-when-trained the other names say NOT_SERVING until a trained version is live. (STORE_SERVICE says
# whether the weight store answers; the others stay SERVING through a store outage.)
LIVENESS_SERVICE = "weldstream.liveness"
SERVICE_NAMES = (
    segmenter_pb2.DESCRIPTOR.services_by_name["Segmenter"].full_name,
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


def initial_model(store: VersionStore, device: torch.device,
                  backend: BackendSettings | None = None) -> LoadedModel:
    """The pinned (else newest) stored version, or the newest one below it that loads and checks, or a fresh
    untrained version 0 when none does.

    A damaged (or, with a signing key, unsigned) version is skipped with an error logged; the swapper
    refuses it again and `inference_model_versions_behind` shows the gap.
    """
    served = store.served()
    candidates = [served] if served is not None else []
    candidates += [v for v in reversed(store.versions()) if v != served and (served is None or v < served)]
    for version in candidates:
        try:
            return load_version(store, version, device, backend=backend)
        except CorruptVersion as exc:
            log.error("not serving version %d: %s", version, exc)
    log.warning("no usable model version in %s; serving an untrained version 0", store.root)
    return untrained_model(device, backend)


def untrained_model(device: torch.device, backend: BackendSettings | None = None) -> LoadedModel:
    return with_backend(fresh_model(ModelConfig(), device), backend or BackendSettings())


class InferenceServer:
    """A running server; `start()` binds (port 0 picks a free port), `stop()` drains and closes."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.metrics = ServerMetrics()
        self.store = configured_store(cfg.store, cfg.model_dir,
                                      read_key(cfg.signing_key_file) if cfg.signing_key_file else None)
        self.store_health = StoreHealth(self.metrics, cfg.poll_interval_s, str(self.store.root))
        self.device = resolve_device(cfg.device)
        self.ready = asyncio.Event()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stack = AsyncExitStack()

    async def start(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.backend == "auto":
            # Resolved once, on the first version, for the life of the server (see backend_choice).
            live = await asyncio.to_thread(self._first_model, BackendSettings("torch"))
            chosen, _ = await asyncio.to_thread(fastest_backend, live.module, live.config, self.device,
                                                cfg.backend_settings)
            self.cfg = cfg = dataclasses.replace(cfg, backend=chosen)
            live = await asyncio.to_thread(with_backend, live, cfg.backend_settings)
        else:
            live = await asyncio.to_thread(self._first_model, cfg.backend_settings)
        self.metrics.record_backend(cfg.backend, live.runner.name, live.backend_refused)
        # A second module, built now while nothing is served, receives the first new version.
        spare = await asyncio.to_thread(fresh_model, live.config, self.device)
        self.slot = ModelSlot(live, spare)
        self._publish_model_metrics()
        loop = asyncio.get_running_loop()
        self.rig_norm = RigNormaliser(cfg.rig_norm_settings, self.metrics,
                                      on_switch=lambda rig: loop.call_soon_threadsafe(self._rig_switched, rig))
        await asyncio.to_thread(self.rig_norm.restore, live)
        self.rig_norm.start()
        self._stack.push_async_callback(asyncio.to_thread, self.rig_norm.close)
        self.batcher = Batcher(self.slot, self.metrics, cfg.max_batch_size, cfg.max_queue_delay_ms / 1000,
                               cfg.max_queue, cfg.max_batch_pixels, cfg.max_queue_pixels, self.rig_norm.statistics)
        self.batcher.start()
        self._stack.push_async_callback(self.batcher.close)
        self.review: ReviewPublisher | None = None
        if cfg.kafka and cfg.review_topic:
            self.review = ReviewPublisher(cfg.kafka, cfg.review_topic,
                                          ReviewPolicy(cfg.review_rate, cfg.review_burst, cfg.review_sample,
                                                       cfg.review_queue), self.metrics, cfg.kafka_security)
            self.review.start()
            self._stack.push_async_callback(self.review.close)
        self.watch = ScanWatch(self.slot, self.metrics, cfg.review_doubt, DriftConfig(threshold=cfg.drift_threshold),
                               self.review, self.rig_norm)

        options = [("grpc.max_receive_message_length", cfg.max_receive_bytes),
                   ("grpc.max_send_message_length", cfg.max_send_bytes)]
        # Metrics outermost, so refused calls are counted UNAUTHENTICATED.
        self.drain = Drain()
        interceptors: list[grpc.aio.ServerInterceptor] = [RequestMetrics(self.metrics), self.drain]
        if cfg.auth_token_file is not None:
            interceptors.append(BearerAuth(read_tokens(cfg.auth_token_file)))
        self.grpc = grpc.aio.server(options=options, interceptors=interceptors)
        segmenter_pb2_grpc.add_SegmenterServicer_to_server(
            SegmenterServicer(cfg, self.slot, self.batcher, self.metrics, self.watch), self.grpc)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(cfg, self.slot, self.batcher, self.metrics, self.ready, self.model_ready, self.watch),
            self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        address = f"{cfg.host}:{cfg.grpc_port}"
        if cfg.tls_cert is not None:
            self.port = self.grpc.add_secure_port(address, server_credentials(cfg))
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind gRPC to {cfg.host}:{cfg.grpc_port}")
        await self.grpc.start()
        if cfg.metrics_port >= 0:
            http, _ = start_http_server(cfg.metrics_port, addr=cfg.metrics_host or cfg.host,
                                        registry=self.metrics.registry)
            self.metrics_port = http.server_port
            self._stack.callback(http.shutdown)

        # The registry's serving history is written on a thread of its own: a slow or absent database
        # never holds up a swap or a request.
        self.registry = await asyncio.to_thread(open_configured, cfg.registry, cfg.model_dir)
        self.name = cfg.server_name or f"{socket.gethostname()}:{self.port}"
        registry_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._stack.callback(self._close_registry, registry_thread)
        self._registry_thread = registry_thread
        self._record_serving()
        self.swapper = Swapper(cfg, self.store, self.slot, self.metrics, on_swap=self._swapped,
                               store_health=self.store_health, on_store=self._health_changed,
                               prepare=self.rig_norm.prepare)
        await self.swapper.start()
        self._stack.push_async_callback(self.swapper.close)

        self.ready.set()
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._publish_health()
        log.info("serving %s v%d on %s:%d (%s%s; metrics :%s, device %s)", cfg.model_name,
                 self.slot.current().version, cfg.host, self.port,
                 "mutual TLS" if cfg.tls_client_ca else "TLS" if cfg.tls_cert else "plaintext",
                 ", bearer tokens" if cfg.auth_token_file else "", self.metrics_port, self.device)

    def _first_model(self, backend: BackendSettings) -> LoadedModel:
        """On a worker thread: what to serve at start; the untrained version 0 while the store does not answer
        (the swapper follows the store once it does)."""
        try:
            return initial_model(self.store, self.device, backend)
        except OSError as exc:  # StoreUnavailable, or a directory store's I/O error
            self.store_health.failed(exc)
            log.error("cannot read the weight store %s at start (%s): serving an untrained version 0 until it "
                      "answers, then following it", self.store.root, exc)
            return untrained_model(self.device, backend)

    def _record_serving(self) -> None:
        if self.registry is not None:
            self._registry_thread.submit(best_effort, self.registry, "record_serving", self.name,
                                         self.slot.current().version)

    def _close_registry(self, thread: ThreadPoolExecutor) -> None:
        thread.shutdown(wait=True)
        if self.registry is not None:
            self.registry.close()

    def _publish_model_metrics(self) -> None:
        live = self.slot.current()
        self.metrics.model_version.set(live.version)
        self.metrics.model_untrained.set(1 if live.untrained else 0)

    def model_ready(self) -> bool:
        """What health, ServerReady and ModelReady report: serving, and (with --ready-when-trained) trained."""
        trained = not (self.cfg.ready_when_trained and self.slot.current().untrained)
        return self.ready.is_set() and trained

    async def _publish_health(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.model_ready() else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        await self.health.set(STORE_SERVICE, health_pb2.HealthCheckResponse.SERVING if self.store_health.up else
                              health_pb2.HealthCheckResponse.NOT_SERVING)

    def _rig_switched(self, rig: str) -> None:
        """A rig's scans are normalised by other statistics now: its drift starts afresh against them."""
        watch = getattr(self, "watch", None)  # statistics restored at start switch rigs before it exists
        if watch is not None:
            watch.drift.forget(rig)

    async def _swapped(self) -> None:
        self.rig_norm.follow(self.slot.current().version)
        self._publish_model_metrics()
        self._record_serving()
        await self._health_changed()

    async def _health_changed(self) -> None:
        if self.ready.is_set():
            await self._publish_health()

    async def stop(self) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls finish within grace."""
        self.ready.clear()
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(await self.drain.drain(self.cfg.grace_s))
        await self._stack.aclose()
        log.info("server stopped")


async def serve(cfg: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down in order."""
    # Handlers first: a SIGTERM that arrives while the server starts (health may already say SERVING
    # before the collector is frozen) still ends in an orderly shutdown instead of killing the process.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = InferenceServer(cfg)
    await server.start()
    # Everything alive now (torch, the models, protobuf descriptors) lives as long as the process: keep
    # it out of the cyclic collector's full passes, which would otherwise stall requests for tens of ms.
    gc.freeze()
    waiter = asyncio.create_task(stop.wait())
    crashed = asyncio.create_task(server.swapper.wait_failed())
    done, _ = await asyncio.wait({waiter, crashed}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiter, crashed):
        task.cancel()
    await server.stop()
