"""The learner's one configuration object, built once in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weldstream.cli_args import parse_size
from weldstream.model import ModelConfig
from weldstream.replay import StepConfig
from weldstream.settings import setting
from weldstream.topics import DEAD_LETTER, DEFAULT_KAFKA, LABELED_SCANS, MODELS
from weldstream.weight_store import DEFAULT_MODEL_DIR


@dataclass(frozen=True)
class LearnerConfig:
    kafka: str = setting(DEFAULT_KAFKA, help="Kafka bootstrap HOST:PORT")
    model_dir: Path = setting(DEFAULT_MODEL_DIR, help="weight store directory")
    metrics_port: int = setting(8003, help="Prometheus /metrics port (-1: off)")
    metrics_host: str = "0.0.0.0"
    group_id: str = setting("weldstream-learner", help="Kafka consumer group")
    topic: str = LABELED_SCANS
    dead_letter_topic: str = DEAD_LETTER
    models_topic: str = MODELS
    model: ModelConfig = field(default_factory=ModelConfig)
    step: StepConfig = field(default_factory=StepConfig)
    # Every scan is resized to this before training and memory (validation too).
    train_size: tuple[int, int] = setting((128, 128), parse=parse_size, help="training resolution, e.g. 128x128")
    batch_size: int = setting(8, help="scans per training step")
    # Steps taken on each incoming batch: labels arrive slower than a GPU (or even a CPU) can learn.
    passes: int = setting(1, help="training steps per incoming batch")
    learning_rate: float = setting(3e-3, flag="--lr", help="optimiser learning rate")
    memory_per_domain: int = setting(64, help="episodic memory budget, scans per domain")
    # Share of every domain's scans held out for validation, chosen by scan id (stable across restarts).
    holdout_share: float = setting(0.15, help="share of every domain's scans held out for validation")
    validation_per_domain: int = 48
    # Publish (or refuse) a candidate every N steps or T seconds, whichever comes first.
    publish_every_steps: int = setting(20, help="consider publishing a version every N steps ...")
    publish_every_s: float = setting(30.0, help="... or every T seconds, whichever comes first")
    # A candidate is refused if any domain's validation mIoU drops more than this below the live version,
    # and a paired bootstrap over the held-out scans finds it lower in at least this share of resamples
    # (0 refuses on the tolerance alone).
    regression_tolerance: float = setting(0.03, help="mIoU drop on a domain that refuses a candidate "
                                                     "(0.03 = 3 points) ...")
    regression_confidence: float = setting(0.95, help="... when a paired bootstrap over the held-out scans "
                                                      "finds it in this share of resamples")
    # A partial batch is trained when the stream has been quiet this long.
    idle_flush_s: float = 2.0
    max_side: int = 4096
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 ...")
    seed: int = 0
    session_timeout_ms: int = setting(10000, help="Kafka consumer session timeout")
    threads: int = setting(0, help="torch CPU threads (0: torch's default)")

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
