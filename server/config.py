"""The server's one configuration object, built once in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "weld-seg"


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_name: str = MODEL_NAME
    # Dynamic batching: a batch closes when full or, under load, after max_queue_delay_ms.
    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue: int = 256
    # Largest accepted scan side; bounds memory per request.
    max_side: int = 4096
    device: str = "auto"
    threads: int = 0
    grace_s: float = 10.0
    # Hot swap: follow announcements on this Kafka cluster (None: poll the weight store only).
    kafka: str | None = None
    models_topic: str = "weld.models"
    poll_interval_s: float = 5.0

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
