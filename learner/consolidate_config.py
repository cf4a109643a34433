"""The consolidation job's one configuration object, built once in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weldstream.kafka_security import KafkaSecurity
from weldstream.registry import REGISTRY_HELP
from weldstream.settings import optional_text, setting
from weldstream.stores import MODEL_DIR_HELP, STORE_HELP, store_location
from weldstream.topics import DEFAULT_KAFKA, LABELED_SCANS, MODELS
from weldstream.weight_store import DEFAULT_MODEL_DIR

STRATEGIES = ("ewc", "si", "lfl", "joint", "replay")


def parse_domains(text: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); '' -> () (every domain, in the order its first scan was labeled)."""
    return tuple(d.strip() for d in text.split(",") if d.strip())


@dataclass(frozen=True)
class ConsolidateConfig:
    strategy: str = setting("ewc", choices=STRATEGIES,
                            help="ewc, si, lfl (Avalanche, domain by domain), replay (domain by domain with the "
                                 "learner's replay memory) or joint (all domains at once)")
    kafka: str | None = setting(DEFAULT_KAFKA, parse=optional_text,
                                help="replay the labeled topic of this Kafka bootstrap and announce the result "
                                     "('' : neither; then give --data)")
    data: str | None = setting("", parse=optional_text,
                               help="read labeled scans from this folder, or a dataset in a bucket "
                                    "(s3://bucket/datasets/NAME), instead of Kafka")
    topic: str = LABELED_SCANS
    models_topic: str = MODELS
    model_dir: Path = setting(DEFAULT_MODEL_DIR, help=MODEL_DIR_HELP)
    store: str = setting("", parse=store_location, help=STORE_HELP)
    registry: str = setting("", help=REGISTRY_HELP)
    epochs: int = setting(2, help="passes over each domain's crops (joint: over all of them)")
    domains: tuple[str, ...] = setting((), parse=parse_domains,
                                       help="domains to learn, in this order, comma-separated (default: all)")
    crop_size: int = setting(0, help="training crop side (0: 96 on CPU, 256 on CUDA, never above the scans)")
    crops_per_scan: int = setting(4, help="crops cut from every scan per pass")
    batch_size: int = setting(16, help="crops per step")
    learning_rate: float = setting(1e-3, flag="--lr", help="AdamW learning rate")
    # Regularisation strengths: ContinualAI's continual-learning-baselines values, untuned here.
    ewc_lambda: float = setting(1.0, help="EWC penalty strength")
    si_lambda: float = setting(0.1, help="SI penalty strength")
    lfl_lambda: float = setting(1e-4, help="LFL feature-distance strength")
    memory_per_domain: int = setting(200, help="replay: crops kept per domain")
    rehearsal: int = setting(8, help="replay: memory crops of past domains in every step")
    from_scratch: bool = setting(False, help="start from fresh weights, not from the served version")
    restart: bool = setting(False, help="ignore the saved progress of an earlier, stopped run")
    # The learner's defaults, so a consolidated version is judged exactly as the learner's are.
    holdout_share: float = setting(0.15, help="share of every domain's scans held out (the learner's split)")
    regression_tolerance: float = setting(0.03, help="mIoU drop on a domain that refuses the result ...")
    regression_confidence: float = setting(0.95, help="... when a paired bootstrap finds it this often")
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 ...")
    seed: int = setting(0, help="seed of crops, shuffling and fresh weights")
    threads: int = setting(0, help="torch CPU threads (0: torch's default)")
    progress: bool = setting(True, help="show a progress bar")
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        if not self.kafka and not self.data:
            raise ValueError("give --kafka (replay the labeled topic) or --data DIR (a folder of scans)")
        if min(self.epochs, self.crops_per_scan, self.batch_size, self.memory_per_domain) < 1:
            raise ValueError("epochs, crops_per_scan, batch_size and memory_per_domain must be >= 1")
        if self.crop_size and (self.crop_size < 32 or self.crop_size % 32):
            raise ValueError("crop_size must be 0 (auto) or a multiple of 32, at least 32")
        if not 0 <= self.holdout_share < 1:
            raise ValueError("holdout_share must be in [0, 1)")
