"""The Page-Hinkley test: flags a lasting rise in the mean of a stream of numbers.

It keeps the running mean of what it has seen and the cumulative sum of each value's excess over that
mean less a tolerance ``delta``. While the stream is stable that sum drifts downwards; after the mean
rises it climbs, and an alarm is raised once it stands ``threshold`` above its lowest point. The test
then starts afresh, so it learns the new level and can flag the next change. No alarm is raised
before ``min_samples`` values (the mean is not yet known).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PageHinkley:
    delta: float = 0.1  # rises smaller than this (in the stream's units) are tolerated
    threshold: float = 8.0  # how far the cumulative excess must climb above its minimum
    min_samples: int = 30
    count: int = 0
    mean: float = 0.0
    cumulative: float = 0.0
    minimum: float = 0.0

    def __post_init__(self) -> None:
        if self.delta < 0 or self.threshold <= 0 or self.min_samples < 1:
            raise ValueError("Page-Hinkley needs delta >= 0, threshold > 0 and min_samples >= 1")

    def update(self, value: float) -> bool:
        """Take one value; True when it completes a change (the detector then starts afresh)."""
        self.count += 1
        self.mean += (value - self.mean) / self.count
        self.cumulative += value - self.mean - self.delta
        self.minimum = min(self.minimum, self.cumulative)
        if self.count >= self.min_samples and self.cumulative - self.minimum > self.threshold:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        self.count, self.mean, self.cumulative, self.minimum = 0, 0.0, 0.0, 0.0
