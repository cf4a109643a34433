"""The review benchmark's one configuration: the drifting stream, the labelling budget and the learner's steps."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("review-first", "random")
# A diagnostic, not a strategy a labelling tool could follow: the scans with the most true defect pixels
# first. It bounds what ranking by any score can gain when what limits the served model is not which scans.
ORACLE = "defect-area oracle"
# One ultrasonic domain learned before the stream starts, then two rigs the served model has never seen:
# another probe frequency with a high gain, and a 7 MHz probe with a gain curve. (The X-ray domains need
# several hundred steps before any defect is found at all, so at this budget both strategies stay at 0
# there and the comparison says nothing; the drift detector is measured on them too.)
DOMAINS = ("ut-pe100-5mhz", "ut-pe80-2mhz-highgain", "ut-pe100-7mhz-tgc")


@dataclass(frozen=True)
class ReviewBenchConfig:
    domains: tuple[str, ...] = DOMAINS  # the first is learned before the stream, the others arrive in turn
    size: tuple[int, int] = (64, 64)
    seeds: tuple[int, ...] = (0, 1, 2)
    strategies: tuple[str, ...] = STRATEGIES
    base_scans: int = 96  # labeled scans of the first domain the served model learned from
    base_steps: int = 150
    labels_per_domain: int = 30  # the inspectors' budget on each new domain
    round_labels: int = 6  # labels per round: the served model is updated after each round
    served_per_round: int = 30  # scans a rig sends (and the server answers) per round; labels come from these
    # After each round the learner trains this many steps on what is labeled (the same for both strategies,
    # and enough to learn the round's labels, so the comparison is about which scans, not how many steps).
    steps_per_round: int = 36
    test_per_domain: int = 32
    batch_size: int = 8
    rehearsal: int = 4
    learning_rate: float = 2e-3
    crop_size: int = 32  # training crops (most centred on a defect); scoring is on whole scans
    # Drift detector measurement: a stable stream of the first domain, and switches to each unseen one.
    stable_scans: int = 1000
    switch_after: int = 100  # scans of the first domain before a switch
    switch_window: int = 50  # a switch must be flagged within this many scans
    threads: int = 2
    device: str = "cpu"
    quick: bool = False

    def __post_init__(self) -> None:
        if len(self.domains) < 2:
            raise ValueError("the review benchmark needs a learned domain and at least one new one")
        if self.labels_per_domain % self.round_labels or self.round_labels > self.served_per_round:
            raise ValueError("labels_per_domain must be a multiple of round_labels, which fits in served_per_round")
        if not set(STRATEGIES) <= set(self.strategies) <= {*STRATEGIES, ORACLE}:
            raise ValueError(f"the benchmark compares {STRATEGIES} (and optionally {ORACLE!r})")
        if not self.seeds:
            raise ValueError("at least one seed is needed")

    @property
    def rounds(self) -> int:
        return self.labels_per_domain // self.round_labels

    @classmethod
    def quick_preset(cls, **overrides: Any) -> ReviewBenchConfig:
        """A pipeline check in a few minutes: one new domain, one seed, few steps."""
        base: dict[str, Any] = dict(domains=DOMAINS[:2], seeds=(0,), base_scans=32, base_steps=20,
                                    labels_per_domain=12, round_labels=6, served_per_round=18, steps_per_round=6,
                                    test_per_domain=8, stable_scans=200, switch_after=60, quick=True)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["domains"], data["size"], data["seeds"] = list(self.domains), list(self.size), list(self.seeds)
        data["strategies"] = list(self.strategies)
        return data
