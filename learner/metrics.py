"""Every metric the learner exports, declared in one place."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("forward_backward", "memory", "projection", "total")
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class LearnerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("learner_scans_consumed_total", "Labeled scans read from Kafka, by use.",
                                ["use"], registry=r)
        self.dead_lettered = Counter("learner_scans_dead_lettered_total",
                                     "Messages sent to the dead-letter topic, by offending field.", ["field"],
                                     registry=r)
        self.steps = Counter("learner_steps_total", "Training steps.", registry=r)
        self.projections = Counter("learner_gem_projections_total",
                                   "Steps whose gradient was projected (a memory constraint was violated).",
                                   registry=r)
        self.step_seconds = Histogram("learner_step_duration_seconds", "Training step time by phase.", ["phase"],
                                      buckets=STEP_BUCKETS, registry=r)
        self.loss = Gauge("learner_loss", "Training loss of the latest step.", registry=r)
        self.memory_fill = Gauge("learner_memory_scans", "Scans held in episodic memory, by domain.", ["domain"],
                                 registry=r)
        self.validation_miou = Gauge("learner_validation_miou", "Latest candidate's validation mIoU by domain.",
                                     ["domain"], registry=r)
        self.validation_dice = Gauge("learner_validation_dice", "Latest candidate's validation Dice by domain.",
                                     ["domain"], registry=r)
        self.versions = Counter("learner_versions_total", "Candidates by outcome.", ["outcome"], registry=r)
        self.judging_seconds = Histogram("learner_judging_duration_seconds",
                                         "Wall time of one judgement: checkpoint, validation of the candidate "
                                         "(and of the served version where held-out scans changed), publish.",
                                         buckets=STEP_BUCKETS + (32.0, 64.0), registry=r)
        self.live_version = Gauge("learner_published_version", "Newest published model version.", registry=r)
        self.lag = Gauge("learner_consumer_lag_messages", "Messages not yet read, all partitions.", registry=r)
        self.current_domain = Gauge("learner_current_domain_info", "1 for the domain being learned now.",
                                    ["domain"], registry=r)
        self.pending = Gauge("learner_pending_scans", "Decoded scans not yet in the training window.", registry=r)
        self.window = Gauge("learner_window_scans", "Scans in the training window.", registry=r)
        self.budget = Gauge("learner_step_budget_remaining",
                            "Training steps earned by labeled scans and not yet taken.", registry=r)
        self.learning_rate = Gauge("learner_learning_rate", "Learning rate of the latest step.", registry=r)
        self.memory_bytes = Gauge("learner_memory_bytes", "Bytes held by the episodic memory (images and masks).",
                                  registry=r)
        self.min_dot = Gauge("learner_gem_min_dot_product",
                             "Smallest <g, G_k> between the applied gradient and a past domain's reference "
                             "gradient (>= 0 means no past domain's loss rises, to first order).", registry=r)
        self.checkpoint_failures = Counter("learner_checkpoint_failures_total",
                                           "Checkpoints that could not be written (a full disk); nothing is "
                                           "committed or published until one is.", registry=r)
        self.store_errors = Counter("learner_store_errors_total",
                                    "Weight-store calls that failed (unreachable, refused, an I/O error): training "
                                    "and checkpoints go on, and the newest candidate is published at a later "
                                    "judgement.", registry=r)
        self.progress = Gauge("learner_loop_progress_timestamp_seconds",
                              "When the learning loop last made progress (unix time); /healthz fails when stale.",
                              registry=r)
        for use in ("train", "holdout", "dead_letter", "skipped"):
            self.consumed.labels(use)
        for phase in PHASES:
            self.step_seconds.labels(phase)
        for outcome in ("published", "refused"):
            self.versions.labels(outcome)
