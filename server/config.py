"""The server's one configuration object, built once in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weldstream.kafka_security import KafkaSecurity
from weldstream.limits import MAX_SCAN_SIDE, request_bytes, response_bytes, scan_pixels
from weldstream.registry import REGISTRY_HELP
from weldstream.server.backends import BACKENDS, PRECISIONS, BackendSettings
from weldstream.server.rig_normalisation import RigNormConfig
from weldstream.settings import optional_path, optional_text, setting
from weldstream.stores import MODEL_DIR_HELP, STORE_HELP, store_location
from weldstream.topics import DEFAULT_KAFKA, MODELS, REVIEW
from weldstream.weight_store import DEFAULT_MODEL_DIR

MODEL_NAME = "weld-seg"


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path = setting(DEFAULT_MODEL_DIR, help=MODEL_DIR_HELP)
    store: str = setting("", parse=store_location, help=STORE_HELP)
    registry: str = setting("", help=REGISTRY_HELP)
    # How this replica appears in the registry's serving history.
    server_name: str = setting("", help="this replica's name in the registry ('' : hostname:grpc-port)")
    host: str = setting("0.0.0.0", help="address the gRPC server listens on")
    grpc_port: int = setting(8001, help="gRPC port (native Segmenter + KServe v2)")
    metrics_port: int = setting(8002, help="Prometheus /metrics port (-1: off)")
    metrics_host: str | None = setting(None, parse=optional_text,
                                       help="address /metrics listens on (default: the gRPC --host)")
    # Security (see the README's "Reliability and security"): TLS, mutual TLS, bearer tokens, signed versions.
    tls_cert: Path | None = setting(None, parse=optional_path, help="PEM certificate chain: serve gRPC over TLS")
    tls_key: Path | None = setting(None, parse=optional_path, help="PEM private key of --tls-cert")
    tls_client_ca: Path | None = setting(None, parse=optional_path,
                                         help="PEM CA bundle: clients must present a certificate it signed (mTLS)")
    auth_token_file: Path | None = setting(None, parse=optional_path,
                                           help="accepted bearer tokens, one a line: calls need metadata "
                                                "'authorization: Bearer <token>' (health checks exempt)")
    signing_key_file: Path | None = setting(None, parse=optional_path,
                                            help="HMAC key: load only versions signed with it")
    model_name: str = MODEL_NAME
    # Dynamic batching: a batch closes when full or, under load, after max_queue_delay_ms.
    max_batch_size: int = setting(8, help="largest micro-batch; 1 turns dynamic batching off")
    max_queue_delay_ms: float = setting(2.0, help="longest a request waits for others to share its batch")
    max_queue: int = setting(256, help="scans accepted and not yet answered before RESOURCE_EXHAUSTED ...")
    # Memory follows pixels, not requests: one 4096 x 4096 scan weighs as much as 256 scans of 256 x 256.
    max_queue_pixels: int = setting(4 * scan_pixels(), help="... or pixels of them (at least one largest scan)")
    max_batch_pixels: int = setting(scan_pixels(2048), help="most pixels in one forward pass (a larger "
                                                            "request runs alone)")
    # Largest accepted scan side (see weldstream.limits): the gRPC message limits follow from it.
    max_side: int = setting(MAX_SCAN_SIDE, help="largest accepted scan height/width")
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 ...")
    threads: int = setting(0, help="CPU threads of the forward pass, torch's or ONNX Runtime's (0: torch's "
                                   "default); pre- and post-processing run on one")
    # How the forward runs (see weldstream.server.backends); anything but fp32 eager is checked against it.
    backend: str = setting("auto", choices=BACKENDS,
                           help="auto: on the CPU the fastest of torchscript, onnxruntime and eager torch, timed at "
                                "start (each checked against fp32 eager's masks), torch on CUDA; torch forces "
                                "eager torch")
    precision: str = setting("auto", choices=PRECISIONS,
                             help="auto: bf16 autocast on CUDA (fp16 without bf16), fp32 on CPU; fp32 turns "
                                  "autocast off")
    cuda_graphs: bool = setting(True, help="on CUDA, replay the forward from CUDA graphs per batch shape")
    # Per-rig normalisation (server/rig_normalisation.py): a shifted rig is served with BatchNorm statistics
    # learned from its own scans.
    rig_normalisation: bool = setting(True, help="serve each shifted rig with BatchNorm statistics re-estimated "
                                                 "from its own served scans (no labels)")
    rig_norm_min_scans: int = setting(8, help="scans a rig sends before its own statistics are used")
    rig_min_gain_db: float = setting(3.0, help="a rig's gain curve against a learned domain's brightness profile "
                                     "is applied only if it spans at least this many dB (see "
                                     "weldstream/gain_curve.py; 0 to always try, a large value to never)")
    rig_keep_distance: float = setting(2.0, help="a rig whose median drift distance is at most this is close "
                                                 "enough to a learned domain to keep the version's statistics")
    rig_gain_adapt_distance: float = setting(6.0, help="a rig whose gain curve (12 dB or more) brings its median "
                                             "drift distance within this, but not within --rig-keep-distance, gets "
                                             "its own statistics on corrected scans (0: never)")
    rig_state_dir: Path | None = setting(None, parse=optional_path,
                                         help="where rigs' statistics and scan reservoirs are kept across restarts "
                                              "(default: rig-statistics beside --model-dir)")
    grace_s: float = 10.0
    # Hot swap: follow announcements on this Kafka cluster (None: poll the weight store only).
    kafka: str | None = setting(DEFAULT_KAFKA, parse=optional_text,
                                help="follow model announcements on this Kafka bootstrap address "
                                     "('' to only poll the store)")
    models_topic: str = MODELS
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    poll_interval_s: float = setting(5.0, flag="--poll-interval", help="seconds between weight-store polls")
    ready_when_trained: bool = setting(False, help="health and ModelReady say ready only once a trained "
                                                   "version is live (not the untrained version 0)")
    # The review loop (README "The review loop"): doubtful scans, and scans of drifting rigs, go to
    # inspectors first. Published only with --kafka.
    review_topic: str = setting(REVIEW, help="Kafka topic for scans worth an inspector's time ('' : none)")
    review_doubt: float = setting(0.1, help="scans whose doubt (0..1) reaches this go to review")
    drift_threshold: float = setting(3.0, help="a rig whose drift score exceeds this has its scans go to review")
    review_rate: float = setting(1.0, help="most scans a second published for review (token bucket)")
    review_burst: int = setting(10, help="scans the review token bucket holds")
    review_sample: float = setting(1.0, help="share of the scans over a threshold that are considered for review")
    review_queue: int = setting(64, help="scans waiting for the review producer; more are dropped and counted")

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must be >= 0")
        if not 16 <= self.max_side <= 16384:
            raise ValueError("max_side must be between 16 and 16384")
        if self.max_queue < self.max_batch_size:
            raise ValueError("max_queue must hold at least one full batch")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if not (0 <= self.review_doubt <= 1 and 0 < self.review_sample <= 1):
            raise ValueError("review_doubt must be in [0, 1] and review_sample in (0, 1]")
        if self.review_rate <= 0 or self.review_burst < 1 or self.review_queue < 1 or self.drift_threshold <= 0:
            raise ValueError("review_rate and drift_threshold must be > 0, review_burst and review_queue >= 1")
        if self.rig_norm_min_scans < 1 or self.rig_keep_distance < 0 or self.rig_gain_adapt_distance < 0:
            raise ValueError("rig_norm_min_scans must be >= 1, rig_keep_distance and rig_gain_adapt_distance >= 0")
        if self.max_queue_pixels < self.max_scan_pixels or self.max_batch_pixels < 1:
            raise ValueError(f"max_queue_pixels must hold at least one largest scan ({self.max_scan_pixels}) "
                             "and max_batch_pixels must be >= 1")

    @property
    def backend_settings(self) -> BackendSettings:
        return BackendSettings(self.backend, self.precision, self.threads, self.cuda_graphs)

    @property
    def rig_norm_settings(self) -> RigNormConfig:
        state_dir = self.rig_state_dir if self.rig_state_dir is not None else self.model_dir.parent / "rig-statistics"
        return RigNormConfig(enabled=self.rig_normalisation, min_scans=self.rig_norm_min_scans,
                             keep_distance=self.rig_keep_distance, min_gain_db=self.rig_min_gain_db,
                             gain_adapt_distance=self.rig_gain_adapt_distance, state_dir=state_dir)

    @property
    def max_scan_pixels(self) -> int:
        """Pixels of the largest scan, and of the most scans one request may carry together."""
        return scan_pixels(self.max_side)

    @property
    def max_receive_bytes(self) -> int:
        """The largest request: one largest scan in float32, plus framing."""
        return request_bytes(self.max_side)

    @property
    def max_send_bytes(self) -> int:
        """The largest response: mask and confidence of the largest scan, plus framing."""
        return response_bytes(self.max_side)
