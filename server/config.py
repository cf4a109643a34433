"""The server's one configuration object, built once in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weldstream.registry import REGISTRY_HELP
from weldstream.settings import optional_text, setting
from weldstream.topics import DEFAULT_KAFKA, MODELS
from weldstream.weight_store import DEFAULT_MODEL_DIR

MODEL_NAME = "weld-seg"


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path = setting(DEFAULT_MODEL_DIR, help="weight store directory")
    registry: str = setting("", help=REGISTRY_HELP)
    # How this replica appears in the registry's serving history.
    server_name: str = setting("", help="this replica's name in the registry ('' : hostname:grpc-port)")
    host: str = setting("0.0.0.0", help="address the gRPC server listens on")
    grpc_port: int = setting(8001, help="gRPC port (native Segmenter + KServe v2)")
    metrics_port: int = setting(8002, help="Prometheus /metrics port (-1: off)")
    model_name: str = MODEL_NAME
    # Dynamic batching: a batch closes when full or, under load, after max_queue_delay_ms.
    max_batch_size: int = setting(8, help="largest micro-batch; 1 turns dynamic batching off")
    max_queue_delay_ms: float = setting(2.0, help="longest a request waits for others to share its batch")
    max_queue: int = setting(256, help="requests queued before RESOURCE_EXHAUSTED")
    # Largest accepted scan side; bounds memory per request.
    max_side: int = setting(4096, help="largest accepted scan height/width")
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 ...")
    threads: int = setting(0, help="torch CPU threads (0: torch's default)")
    grace_s: float = 10.0
    # Hot swap: follow announcements on this Kafka cluster (None: poll the weight store only).
    kafka: str | None = setting(DEFAULT_KAFKA, parse=optional_text,
                                help="follow model announcements on this Kafka bootstrap address "
                                     "('' to only poll the store)")
    models_topic: str = MODELS
    poll_interval_s: float = setting(5.0, flag="--poll-interval", help="seconds between weight-store polls")

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must be >= 0")
        if not 16 <= self.max_side <= 16384:
            raise ValueError("max_side must be between 16 and 16384")
        if self.max_queue < self.max_batch_size:
            raise ValueError("max_queue must hold at least one full batch")

    @property
    def max_message_bytes(self) -> int:
        """Big enough for the largest accepted float32 scan plus framing."""
        return self.max_side * self.max_side * 4 + (1 << 20)
