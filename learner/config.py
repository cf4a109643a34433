"""The learner's one configuration object, built once in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weldstream.model import ModelConfig
from weldstream.replay import StepConfig
from weldstream.topics import DEAD_LETTER, LABELED_SCANS, MODELS


@dataclass(frozen=True)
class LearnerConfig:
    kafka: str
    model_dir: Path
    metrics_port: int = 8003
    metrics_host: str = "0.0.0.0"
    group_id: str = "weldstream-learner"
    topic: str = LABELED_SCANS
    dead_letter_topic: str = DEAD_LETTER
    models_topic: str = MODELS
    model: ModelConfig = field(default_factory=ModelConfig)
    step: StepConfig = field(default_factory=StepConfig)
    # Every scan is resized to this before training and memory (validation too).
    train_size: tuple[int, int] = (128, 128)
    batch_size: int = 8
    # Steps taken on each incoming batch: labels arrive slower than a GPU (or even a CPU) can learn.
    passes: int = 1
    learning_rate: float = 3e-3
    memory_per_domain: int = 64
    # Share of every domain's scans held out for validation, chosen by scan id (stable across restarts).
    holdout_share: float = 0.15
    validation_per_domain: int = 48
    # Publish (or refuse) a candidate every N steps or T seconds, whichever comes first.
    publish_every_steps: int = 20
    publish_every_s: float = 30.0
    # A candidate is refused if any domain's validation mIoU drops more than this below the live version,
    # and a paired bootstrap over the held-out scans finds it lower in at least this share of resamples
    # (0 refuses on the tolerance alone).
    regression_tolerance: float = 0.03
    regression_confidence: float = 0.95
    # A partial batch is trained when the stream has been quiet this long.
    idle_flush_s: float = 2.0
    max_side: int = 4096
    device: str = "auto"
    seed: int = 0
    session_timeout_ms: int = 10000
    threads: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.holdout_share < 1:
            raise ValueError("holdout_share must be in [0, 1)")
        if self.batch_size < 1 or self.memory_per_domain < 1 or self.passes < 1:
            raise ValueError("batch_size, passes and memory_per_domain must be >= 1")
        if self.publish_every_steps < 1 or self.publish_every_s <= 0:
            raise ValueError("publish_every_steps must be >= 1 and publish_every_s > 0")
        if not 0 <= self.regression_confidence <= 1:
            raise ValueError("regression_confidence must be in [0, 1]")
        if min(self.train_size) < 32:
            raise ValueError("train_size must be at least 32 x 32")
