"""Every metric the server exports, declared in one place (Prometheus naming: component prefix, units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from weldstream.server.backends import BUILT_BACKENDS

METHODS = ("Segment", "SegmentStream", "GetModel", "ModelInfer", "ModelMetadata", "ModelReady",
           "ServerLive", "ServerReady", "ServerMetadata")
CODES = ("OK", "INVALID_ARGUMENT", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "NOT_FOUND", "INTERNAL", "CANCELLED",
         "DEADLINE_EXCEEDED", "UNAUTHENTICATED")
DOUBT_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
# Rig labels stay bounded: the first MAX_RIG_LABELS rigs seen get their own, later ones share "other".
MAX_RIG_LABELS = 32
OTHER_RIG = "other"
UNNAMED_RIG = "unnamed"
REVIEW_RESULTS = ("sent", "duplicate", "rate_limited", "sampled_out", "queue_full", "failed")
BACKEND_NAMES = ("torch", "torchscript", "torch-bf16", "torch-fp16", "torch-bf16-graphs", "torch-fp16-graphs",
                 "onnxruntime")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    """One registry per server instance, so several servers can live in one test process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("inference_requests_total", "Requests by gRPC method and status code.",
                                ["method", "code"], registry=r)
        self.request_seconds = Histogram("inference_request_duration_seconds",
                                         "Server-side request latency.", ["method"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("inference_inflight_requests", "Requests being handled now.", registry=r)
        self.batch_size = Histogram("inference_batch_size", "Scans per forward pass.",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.inference_seconds = Histogram("inference_batch_duration_seconds",
                                           "Time of one batched forward pass incl. pre/post-processing.",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("inference_queue_depth", "Scans accepted and not yet answered.", registry=r)
        self.queue_pixels = Gauge("inference_queue_pixels",
                                  "Pixels of the scans accepted and not yet answered (bounded by --max-queue-pixels).",
                                  registry=r)
        self.expired = Counter("inference_expired_scans_total",
                               "Scans dropped unrun because their request's deadline passed in the queue.", registry=r)
        self.model_version = Gauge("inference_model_version", "Version of the live model.", registry=r)
        self.model_untrained = Gauge("inference_model_untrained",
                                     "1 while the live model is a fresh, untrained version 0.", registry=r)
        self.versions_behind = Gauge("inference_model_versions_behind",
                                     "Newest version in the weight store minus the live version.", registry=r)
        self.swaps = Counter("inference_model_swaps_total",
                             "Hot swaps by result: swapped, stale, retry (transient load error) or failed "
                             "(a damaged version, refused for good).", ["result"], registry=r)
        self.store_up = Gauge("inference_store_up",
                              "1 while the weight store answers this server's polls, 0 during an outage (the live "
                              "version is served on and polls back off).", registry=r)
        self.store_errors = Counter("inference_store_errors_total",
                                    "Weight-store calls that failed: polls for what to serve, and version "
                                    "downloads (unreachable, timed out, credentials refused).", registry=r)
        self.swap_seconds = Histogram("inference_model_swap_duration_seconds",
                                      "Load + verify + warm-up time of a new version.", registry=r)
        self.freshness_seconds = Histogram(
            "inference_model_freshness_seconds",
            "At each swap: now minus the median label time of the scans the new version learned from.",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800), registry=r)
        self.scan_doubt = Histogram("inference_scan_doubt", "Doubt of each served scan (0..1), per rig.", ["rig"],
                                    buckets=DOUBT_BUCKETS, registry=r)
        self.region_doubt = Histogram("inference_region_doubt", "Doubt of each served defect region (0..1), per rig.",
                                      ["rig"], buckets=DOUBT_BUCKETS, registry=r)
        self.drift_score = Gauge("inference_drift_score",
                                 "Distance of a rig's recent scans from the domains the live version learned "
                                 "(RMS z-score of pooled encoder features; about 1 on a learned domain).",
                                 ["rig"], registry=r)
        self.drift_events = Counter("inference_drift_events_total",
                                    "Changes in a rig's scans flagged by the Page-Hinkley detector.", ["rig"],
                                    registry=r)
        self.review_scans = Counter("inference_review_scans_total",
                                    "Scans that crossed the review threshold, by what became of them: sent to "
                                    "weld.scans.review, or dropped (duplicate, rate_limited, sampled_out, "
                                    "queue_full, failed).", ["result"], registry=r)
        for result in REVIEW_RESULTS:
            self.review_scans.labels(result)
        self.backend = Gauge("inference_backend_info", "1 for the backend serving the live version.", ["backend"],
                             registry=r)
        self.backend_fallbacks = Counter(
            "inference_backend_fallbacks_total",
            "Versions served by fp32 eager torch instead of the backend asked for, by that backend and reason "
            "(failed: export or session error; disagrees: masks differ from fp32 eager on the check scans).",
            ["backend", "reason"], registry=r)
        self.normalisation_scans = Counter(
            "inference_normalisation_scans_total",
            "Scans served by which BatchNorm statistics (rig: the rig's own; version: the version's trained "
            "ones; gain: the version's, on scans corrected by the rig's gain curve; rig+gain: the rig's own, on "
            "corrected scans) and the backend that ran them (a rig's own statistics run on eager torch).",
            ["source", "backend"], registry=r)
        self.rig_statistics_scans = Gauge(
            "inference_rig_statistics_scans",
            "Scans behind a rig's own normalisation statistics (0 while it is served with the version's).",
            ["rig"], registry=r)
        self.rig_gain_db = Gauge(
            "inference_rig_gain_db",
            "Span in dB of the gain curve a rig's scans are corrected by before the model (another TGC slope or "
            "dose falloff than the learned domain it is matched to; 0: none).", ["rig"], registry=r)
        self.rig_statistics_resets = Counter(
            "inference_rig_statistics_resets_total",
            "Rigs whose statistics started over: drift (its drift detector fired) or mismatch (its scans "
            "stopped resembling its statistics).", ["rig", "reason"], registry=r)
        self.rig_statistics_dropped = Counter(
            "inference_rig_statistics_dropped_scans_total",
            "Served scans not measured into their rig's statistics because the measuring queue was full.",
            registry=r)
        for method in METHODS:
            self.request_seconds.labels(method)
            for code in CODES:
                self.requests.labels(method, code)
        for result in ("swapped", "stale", "retry", "failed"):
            self.swaps.labels(result)
        for backend in BACKEND_NAMES:
            self.backend.labels(backend)
        for backend in BUILT_BACKENDS:
            for reason in ("failed", "disagrees"):
                self.backend_fallbacks.labels(backend, reason)

    def record_backend(self, wanted: str, serving: str, refused: str) -> None:
        """A version was loaded for serving with backend ``serving`` (``refused``: why not ``wanted``)."""
        if refused:
            self.backend_fallbacks.labels(wanted, refused).inc()
        for name in BACKEND_NAMES:
            self.backend.labels(name).set(1 if name == serving else 0)


class RigLabels:
    """Maps rig ids to a bounded set of Prometheus label values (rig ids come from clients)."""

    def __init__(self, limit: int = MAX_RIG_LABELS) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, rig_id: str) -> str:
        if not rig_id:
            return UNNAMED_RIG
        if rig_id in self._known:
            return rig_id
        if len(self._known) < self._limit:
            self._known.add(rig_id)
            return rig_id
        return OTHER_RIG
