"""The learner's one configuration object, built once in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weldstream.kafka_security import KafkaSecurity
from weldstream.limits import MAX_SCAN_SIDE
from weldstream.model import ModelConfig
from weldstream.registry import REGISTRY_HELP
from weldstream.replay import StepConfig
from weldstream.settings import comma_list, optional_path, setting
from weldstream.stores import MODEL_DIR_HELP, STORE_HELP, store_location
from weldstream.topics import DEAD_LETTER, DEFAULT_KAFKA, LABELED_SCANS, MODELS
from weldstream.weight_store import DEFAULT_MODEL_DIR


@dataclass(frozen=True)
class LearnerConfig:
    kafka: str = setting(DEFAULT_KAFKA, help="Kafka bootstrap HOST:PORT")
    model_dir: Path = setting(DEFAULT_MODEL_DIR, help=MODEL_DIR_HELP)
    store: str = setting("", parse=store_location, help=STORE_HELP)
    registry: str = setting("", help=REGISTRY_HELP)
    metrics_port: int = setting(8003, help="Prometheus /metrics port (-1: off)")
    metrics_host: str = setting("0.0.0.0", help="address /metrics and /healthz listen on")
    signing_key_file: Path | None = setting(None, parse=optional_path,
                                            help="HMAC key: sign every published version (servers check it)")
    group_id: str = setting("weldstream-learner", help="Kafka consumer group")
    topic: str = LABELED_SCANS
    dead_letter_topic: str = DEAD_LETTER
    models_topic: str = MODELS
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    model: ModelConfig = field(default_factory=ModelConfig)
    step: StepConfig = field(default_factory=StepConfig)
    # Training crops are cut from scans at their native size (what the server sees); 0 picks by device.
    crop_size: int = setting(0, help="training crop side in pixels (0: 96 on CPU, 256 on CUDA, never above the scans)")
    batch_size: int = setting(8, help="window crops per training step (memory scans are added to these)")
    # Labels arrive far slower than a device learns: each scan earns this many steps, spent whenever
    # there is compute (also after the stream pauses), on fresh crops of the window and memory.
    max_steps_per_scan: int = setting(4, help="training steps each labeled scan earns")
    window_scans: int = setting(256, help="recent scans kept for training (native size, on the device)")
    window_mb: int = setting(256, help="... and at most this many MiB of them")
    defect_share: float = setting(0.7, help="share of training crops centred on a defect")
    learning_rate: float = setting(2e-3, flag="--lr", help="AdamW peak learning rate")
    weight_decay: float = setting(1e-4, help="AdamW weight decay")
    warmup_steps: int = setting(30, help="linear learning-rate warm-up at the start")
    # The rate anneals over the last decay_steps of the budget, so a pause in the stream ends in a
    # well-settled model; new scans raise the budget and the rate again.
    decay_steps: int = setting(400, help="the learning rate anneals over the budget's last N steps ...")
    final_lr_share: float = setting(0.05, help="... down to this share of the peak")
    # Labels come in bursts (a shift's inspections, an imported folder) that earn up to a window's worth of
    # steps ahead. Once none has arrived for this long, the budget left shrinks to the anneal's steps, so a
    # paused stream is served a settled model within minutes even on a CPU, not after the whole budget.
    settle_after_s: float = setting(10.0, help="a stream quiet this many seconds settles: the budget left "
                                               "shrinks to --decay-steps (0: never)")
    # What is judged and published is an exponential average of the trained weights (learner/averaging.py):
    # it holds old domains steady while the trained weights wander at the peak learning rate.
    average_half_life: float = setting(20.0, help="published weights average the trained ones over "
                                                  "this half-life in steps (0: publish the trained weights)")
    # One crop (crop_size²) per stored scan: 200 crops of 96² are 7.4 MB a domain in float32.
    memory_per_domain: int = setting(200, help="episodic memory budget, crops per domain")
    # Share of every domain's scans held out for validation, chosen by scan id (stable across restarts).
    holdout_share: float = setting(0.15, help="share of every domain's scans held out for validation")
    validation_per_domain: int = 48
    validation_mb: int = setting(128, help="held-out scans kept per domain, at most this many MiB (native size)")
    # Publish (or refuse) a candidate every N steps or T seconds, whichever comes first.
    publish_every_steps: int = setting(20, help="consider publishing a version every N steps ...")
    publish_every_s: float = setting(30.0, help="... or every T seconds, whichever comes first")
    # Judging a candidate (checkpoint, validation of it and of the served version, drift references) costs
    # as much as dozens of steps on a 2-core CPU: the step trigger waits until judging has taken at most
    # this share of the time since the last judgement (the seconds trigger above still bounds the wait).
    judging_share: float = setting(0.1, help="most share of wall time spent judging candidates when the "
                                             "step trigger fires ...")
    # While labels learned since the last version wait to be served, judging may take a larger share, so
    # an inspector's label reaches the rigs within seconds; once they are served the learner trains at
    # the share above. On 2 cores (judgements of about 2.5 s): 0.1 throughout gave a label-to-served
    # median of 12.4 s, 0.25 throughout 8.5 s with a quarter fewer steps.
    fresh_judging_share: float = setting(0.25, help="... and while labels learned since the last version "
                                                    "wait to be served")
    # A candidate is refused if any domain's validation mIoU drops more than this below the live version,
    # and a paired bootstrap over the held-out scans finds it lower in at least this share of resamples
    # (0 refuses on the tolerance alone).
    regression_tolerance: float = setting(0.03, help="mIoU drop on a domain that refuses a candidate "
                                                     "(0.03 = 3 points) ...")
    regression_confidence: float = setting(0.95, help="... when a paired bootstrap over the held-out scans "
                                                      "finds it in this share of resamples")
    # Against the served version alone, an old domain can slide in steps that each stay within the
    # tolerance while a new one is learned; "best" bounds the slide, at the cost of holding back the
    # versions that first serve the new domain while the old one dips.
    regression_baseline: str = setting("served", help="what each domain's drop is measured from: served (the "
                                                      "version served now) or best (the best version served on "
                                                      "the same held-out scans, or the served one if better)")
    # Every domain tag becomes a memory block, a GEM constraint and metric label values: new domains are
    # welcome (a new rig is the point of learning), but only up to a bound, and only listed ones if a list is given.
    max_domains: int = setting(32, help="most domains the learner accepts; records of further ones are "
                                        "dead-lettered")
    domain_allowlist: tuple[str, ...] = setting((), parse=comma_list,
                                                help="comma-separated domains to accept (empty: any, up to "
                                                     "--max-domains)")
    max_side: int = MAX_SCAN_SIDE
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 ...")
    seed: int = 0
    session_timeout_ms: int = setting(10000, help="Kafka consumer session timeout")
    threads: int = setting(0, help="torch CPU threads (0: torch's default)")
    # /healthz on the metrics port answers 503 once the loop has made no progress for this long.
    liveness_timeout_s: float = setting(300.0, help="seconds without loop progress before /healthz fails")

    def __post_init__(self) -> None:
        if not 0 <= self.holdout_share < 1:
            raise ValueError("holdout_share must be in [0, 1)")
        if min(self.batch_size, self.memory_per_domain, self.max_steps_per_scan, self.window_scans,
               self.window_mb) < 1:
            raise ValueError("batch_size, memory_per_domain, max_steps_per_scan, window_scans and window_mb "
                             "must be >= 1")
        if self.crop_size and (self.crop_size < 32 or self.crop_size % 32):
            raise ValueError("crop_size must be 0 (auto) or a multiple of 32, at least 32")
        if self.average_half_life < 0:
            raise ValueError("average_half_life must be >= 0 steps")
        if not 0 <= self.defect_share <= 1 or not 0 < self.final_lr_share <= 1:
            raise ValueError("defect_share must be in [0, 1] and final_lr_share in (0, 1]")
        if self.publish_every_steps < 1 or self.publish_every_s <= 0:
            raise ValueError("publish_every_steps must be >= 1 and publish_every_s > 0")
        if not 0 < self.judging_share <= 1 or not 0 < self.fresh_judging_share <= 1:
            raise ValueError("judging_share and fresh_judging_share must be in (0, 1]")
        if not 0 <= self.regression_confidence <= 1:
            raise ValueError("regression_confidence must be in [0, 1]")
        if self.regression_baseline not in ("served", "best"):
            raise ValueError("regression_baseline must be served or best")
        if self.max_domains < 1 or self.liveness_timeout_s <= 0:
            raise ValueError("max_domains must be >= 1 and liveness_timeout_s > 0")
