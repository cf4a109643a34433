"""The adaptation benchmark's one configuration: the versions trained, the rigs served, the scan counts."""

from __future__ import annotations

from dataclasses import dataclass, replace

from weldstream.bench.adapt.transforms import RADIOGRAPH_SOURCE, ULTRASONIC_SOURCE

# The stress rows, each on a server of its own.
STRESS = ("background", "shared-id", "interleaved", "batch-1", "mixed-sizes")


@dataclass(frozen=True)
class AdaptBench:
    sources: tuple[str, ...] = (ULTRASONIC_SOURCE, RADIOGRAPH_SOURCE)  # one version trained on each
    size: tuple[int, int] = (128, 128)
    steps: int = 500  # learner steps per version
    train_scans: int = 256
    crop_size: int = 128  # the learner's training crops (128 at 128 x 128: whole scans)
    reference_scans: int = 32  # held-out scans of the source: the version's score and drift reference
    counts: tuple[int, ...] = (0, 1, 8, 32, 128)  # unlabeled scans of a rig sent before it is scored
    test_scans: int = 32  # held-out scans scored per row (other seeds than any scan sent to adapt)
    transforms: tuple[str, ...] = ()  # the rigs of transforms.rigs_of to run ((): all)
    unseen: int = 5  # the simulator's other domains served to each version as rigs of their own (at most 5)
    stress: tuple[str, ...] = STRESS
    served_rows: bool = True  # False: only the label rows (in-process), no server started
    labels: tuple[int, ...] = (4, 16, 64)  # labeled scans of each transform rig the learner then learns ...
    label_steps: int = 96  # ... in this many optimiser steps, whatever the count
    old_rig_scans: int = 16  # scans the old rig sends on every row's server before its test scans
    threads: int = 2  # torch threads of the training and of each server's forward
    in_flight: int = 8  # calls a rig has open at once while it adapts (so the server batches them)
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        if not self.sources or self.counts[:1] != (0,) or list(self.counts) != sorted(set(self.counts)):
            raise ValueError("at least one source, and counts rising from 0 without repeats")
        if self.test_scans < 2 or self.steps < 1 or self.train_scans < 1:
            raise ValueError("test_scans must be at least 2, steps and train_scans at least 1")
        if any(k < 1 for k in self.labels) or self.label_steps < 1:
            raise ValueError("label counts and label_steps must be at least 1")
        if not self.served_rows and not self.labels:
            raise ValueError("nothing to measure: no served rows and no label counts")
        unknown = set(self.stress) - set(STRESS)
        if unknown:
            raise ValueError(f"unknown stress rows {sorted(unknown)}; choose from {STRESS}")

    @classmethod
    def quick_preset(cls) -> AdaptBench:
        """A pipeline check in well under a minute of CPU: a tiny ultrasonic version, two transforms, one
        unseen domain, every stress row, counts 0 and 8."""
        return cls(sources=(ULTRASONIC_SOURCE,), size=(64, 64), steps=96, train_scans=48, crop_size=32,
                   reference_scans=8, counts=(0, 8), test_scans=6, transforms=("flip+gamma+noise+16-bit", "blur"),
                   unseen=1, labels=(4,), label_steps=8, old_rig_scans=8, threads=1, in_flight=4, quick=True)

    def with_changes(self, **changes: object) -> AdaptBench:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
