"""Every row of `weldstream bench adapt`: a rig's scans sent to a real server, scored after each count.

How a count is measured without the scoring disturbing it. The server measures every scan it serves into
its rig's statistics, the test scans too. So a row's scans at count N go to fresh rig ids (*clones* of the
rig): each clone first sends N adaptation scans (with ``in_flight`` calls open, so the server batches them),
the server is settled (``rig_norm.settle``: every scan served so far measured), and then a few of the test
scans are sent to that clone one at a time, settled after each, so every test scan is served with the
statistics of a known number of scans: N, N + 1, ... up to N + group - 1, where the group is a quarter of N
(the responses' ``normalisation.scans`` are kept and reported). Below the server's ``rig_norm_min_scans`` a
rig is served with the version's statistics anyway, so there the group runs up to that minimum. Count 0 is
scored on a server started with ``--no-rig-normalisation``. Each row runs on a server of its own (the server
keeps statistics for at most 32 rig labels), which afterwards also serves the old rig (the source domain's
own scans): its score there is the old rig's score beside that row.

The oracle is in-process: statistics measured with ``weldstream.norm_stats`` from the test scans
themselves, per rig id, served with ``with_statistics``.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weldstream.bench.adapt import inprocess
from weldstream.bench.adapt.config import AdaptBench
from weldstream.bench.adapt.models import Trained, train_and_publish
from weldstream.bench.adapt.report import reference_count
from weldstream.bench.adapt.served import Answer, ServedModel
from weldstream.bench.adapt.transforms import Rig, old_rig, rigs_of, unseen_rig
from weldstream.model import ModelConfig
from weldstream.scoring import confusion_matrix, score_confusion
from weldstream.server.config import ServerConfig
from weldstream.simulator import domain_names
from weldstream.simulator.scan import render_scan

ADAPT_SEED, TEST_SEED, OLD_RIG_SEED = 3_000_000, 4_000_000, 3_900_000
STEM_SEEDS = 250_000  # seed range of each rig id's adaptation scans in a row
MIN_SCANS = ServerConfig().rig_norm_min_scans  # the server's default, which the benchmark serves with

Scan = tuple[np.ndarray, np.ndarray]  # (image, mask)


@dataclass(frozen=True)
class Row:
    """One row of the report: what is sent, under which rig ids, to the version trained on ``model``."""

    name: str
    kind: str  # "old", "transform", "unseen" or "stress"
    model: str
    streams: tuple[tuple[str, Rig], ...]  # (rig id, physical rig); one id twice: two rigs behind one id
    plan: str = "plain"  # plain, background, batch-1, mixed-sizes, shared-id, interleaved
    description: str = ""

    @property
    def stems(self) -> list[str]:
        return list(dict.fromkeys(stem for stem, _ in self.streams))

    def rigs(self, stem: str) -> list[Rig]:
        return [rig for s, rig in self.streams if s == stem]


def rows_for(cfg: AdaptBench, source: str) -> list[Row]:
    old = old_rig(source)
    transforms = [r for r in rigs_of(source) if not cfg.transforms or r.name in cfg.transforms]
    rows = [Row(old.name, "old", source, (("old", old),), description=old.description)]
    rows += [Row(r.name, "transform", source, ((r.name, r),), description=r.description) for r in transforms]
    unseen = [d for d in domain_names() if d != source][:cfg.unseen]
    rows += [Row(d, "unseen", source, ((d, unseen_rig(d)),), description="another simulator domain") for d in unseen]
    ultrasonic = rigs_of(source)
    if len(ultrasonic) < 2 or not cfg.stress:
        return rows  # the stress rows need two transforms of the source (the ultrasonic one has them)
    a, b = ultrasonic[0], ultrasonic[1]
    c = ultrasonic[2] if len(ultrasonic) > 2 else b
    stress = {
        "background": Row(f"{a.name}, adapted on flaw-free scans", "stress", source, (("bg", a),), "background",
                          "the rig's adaptation scans hold no flaw; scored on its usual scans"),
        "shared-id": Row(f"{a.name} + {b.name} behind one rig id", "stress", source, (("shared", a), ("shared", b)),
                         "shared-id", "two physical rigs send under one id, scan by scan; scored on both"),
        "interleaved": Row(f"{a.name} and {c.name} interleaved", "stress", source, (("A", a), ("B", c)),
                           "interleaved", "two rigs with ids of their own, their scans interleaved one by one"),
        "batch-1": Row(f"{a.name}, batch size 1", "stress", source, (("b1", a),), "batch-1",
                       "server with --max-batch-size 1, the rig sends one scan at a time"),
        "mixed-sizes": Row(f"{a.name}, mixed sizes", "stress", source, (("mixed", a),), "mixed-sizes",
                           "the rig's scans alternate between two sizes"),
    }
    return rows + [stress[name] for name in cfg.stress]


def other_size(size: tuple[int, int]) -> tuple[int, int]:
    """The second size of the mixed-size row: 3/4 the height, 5/4 the width (96 x 160 beside 128 x 128)."""
    return max(32, size[0] * 3 // 4), size[1] * 5 // 4


def render(rig: Rig, seed: int, size: tuple[int, int], defects: bool = True) -> Scan:
    """The rig's scan ``seed``: the source's scan through the rig's transform (flaw-free if asked)."""
    sample = render_scan(rig.source, seed, size, with_defects=defects)
    mask = sample.mask if defects else np.zeros_like(sample.mask)
    return rig.scan(sample.image, mask, seed)


def group_size(count: int, min_scans: int = MIN_SCANS) -> int:
    """Test scans scored on one clone after ``count`` adaptation scans (see the module's docstring)."""
    return min_scans - count if count < min_scans else max(1, count // 4)


class Tally:
    """Confusions and the statistics each scored scan was served with."""

    def __init__(self, classes: int) -> None:
        self.confusion = torch.zeros(classes, classes, dtype=torch.int64)
        self.served: list[tuple[str, int]] = []
        self.drift: list[float] = []
        self.gains: list[float] = []  # per scored scan, the span of the gain curve it was corrected by (0: none)

    def add(self, predicted: np.ndarray, truth: np.ndarray, answer: Answer | None = None) -> None:
        k = self.confusion.shape[0]
        self.confusion += confusion_matrix(torch.from_numpy(np.array(predicted)), torch.from_numpy(np.array(truth)), k)
        self.served.append((answer.source, answer.scans) if answer is not None else ("version", 0))
        if answer is not None:
            self.drift.append(answer.drift)
        self.gains.append(answer.gain_db if answer is not None else 0.0)

    @property
    def miou(self) -> float:
        return score_confusion(self.confusion, len(self.served)).miou

    def summary(self) -> dict[str, Any]:
        by_rig = [scans for source, scans in self.served if source == "rig"]
        gained = [db for db in self.gains if db > 0]
        return {"scored": len(self.served), "rig": len(by_rig),
                "rig_scans": [min(by_rig), max(by_rig)] if by_rig else None,
                "gain": len(gained), "gain_db": round(float(np.mean(gained)), 1) if gained else None,
                "drift": round(float(np.mean(self.drift)), 2) if self.drift else None}


class RowRun:
    """One row's scans (test and adaptation), rendered once, and its measurements."""

    def __init__(self, row: Row, cfg: AdaptBench) -> None:
        self.row, self.cfg = row, cfg
        stems = row.stems
        self.per_stem = max(1, cfg.test_scans // len(stems))
        self.tests: dict[str, list[Scan]] = {stem: [self._scan(stem, TEST_SEED + i) for i in range(self.per_stem)]
                                             for stem in stems}

    def _size(self, seed: int) -> tuple[int, int]:
        return other_size(self.cfg.size) if self.row.plan == "mixed-sizes" and seed % 2 else self.cfg.size

    def _scan(self, stem: str, seed: int, defects: bool = True) -> Scan:
        rigs = self.row.rigs(stem)
        return render(rigs[seed % len(rigs)], seed, self._size(seed), defects)

    def adaptation(self, stem_index: int, count: int, clone: int) -> list[np.ndarray]:
        stem = self.row.stems[stem_index]
        first = ADAPT_SEED + stem_index * STEM_SEEDS + count * 1000 + clone * count
        return [self._scan(stem, first + i, self.row.plan != "background")[0] for i in range(count)]

    def all_tests(self) -> list[tuple[str, Scan]]:
        return [(stem, scan) for stem in self.row.stems for scan in self.tests[stem]]


async def score_global(served: ServedModel, run: RowRun, classes: int) -> tuple[Tally, list[Answer]]:
    """Count 0: the test scans on the server without rig normalisation (or, for the old rig, as they come)."""
    tests = run.all_tests()
    answers = await served.send([(stem, image) for stem, (image, _) in tests])
    tally = Tally(classes)
    for (_, (_, mask)), answer in zip(tests, answers, strict=True):
        tally.add(answer.mask, mask, answer)
    return tally, answers


async def score_count(served: ServedModel, run: RowRun, count: int, classes: int
                      ) -> tuple[Tally, list[tuple[int, str]]]:
    """The row's test scans, each scored on a clone that has sent ``count`` adaptation scans first; also the
    server's scan count and decision of each clone right after its adaptation (0 where it serves the
    version's statistics)."""
    stems = run.row.stems
    group = group_size(count)
    clones = math.ceil(run.per_stem / group)

    def clone_id(stem: str, clone: int) -> str:
        return f"{stem}@{count}#{clone}"

    sends: list[tuple[str, np.ndarray]] = []
    for clone in range(clones):
        lists = [run.adaptation(j, count, clone) for j in range(len(stems))]
        for i in range(count):  # one rig id's scans after another's, scan by scan
            sends += [(clone_id(stem, clone), lists[j][i]) for j, stem in enumerate(stems)]
    await served.send(sends)
    await served.settle()
    measured = [(served.scans(clone_id(stem, clone)), served.decision(clone_id(stem, clone)))
                for clone in range(clones) for stem in stems]
    tally = Tally(classes)
    for clone in range(clones):
        for k in range(clone * group, min(run.per_stem, (clone + 1) * group)):
            for stem in stems:
                image, mask = run.tests[stem][k]
                answer: Answer = await served.segment(clone_id(stem, clone), image)
                await served.settle()
                tally.add(answer.mask, mask, answer)
    return tally, measured


async def score_old_rig(served: ServedModel, old: RowRun, classes: int) -> Tally:
    """The old rig on a row's server: ``old_rig_scans`` of its scans, settled, then its test scans."""
    rig = old.row.streams[0][1]
    warm = [render(rig, OLD_RIG_SEED + i, old.cfg.size)[0] for i in range(old.cfg.old_rig_scans)]
    await served.send([("old", image) for image in warm])
    await served.settle()
    return (await score_global(served, old, classes))[0]


def in_process(model: torch.nn.Module, run: RowRun, stride: int, classes: int, count: int | None = None) -> float:
    """mIoU with every rig id's statistics measured in-process: from ``count`` of its adaptation scans (the
    first clone's), or, for the oracle (None), from its own test scans."""
    tally = Tally(classes)
    for j, stem in enumerate(run.row.stems):
        images = [image for image, _ in run.tests[stem]]
        measured = images if count is None else run.adaptation(j, count, 0)
        moments = inprocess.rig_moments(model, measured, stride)
        for predicted, (_, mask) in zip(inprocess.predict(model, images, stride, moments), run.tests[stem],
                                        strict=True):
            tally.add(predicted, mask)
    return tally.miou


async def run_source(cfg: AdaptBench, source: str, work: Path, progress: Callable[[str], None]
                     ) -> dict[str, Any]:
    """Train and publish the version of ``source``, then every row of it."""
    started = time.monotonic()
    trained: Trained = train_and_publish(source, work / "models", cfg.steps, cfg.train_scans, cfg.size,
                                         cfg.reference_scans, cfg.crop_size, cfg.seed)
    progress(f"{source}: version trained in {time.monotonic() - started:.0f} s ({trained.steps} steps), "
             f"held-out mIoU {trained.validation_miou:.3f}")
    model, stride = trained.model, ModelConfig.from_dict(trained.manifest.model_config).stride
    classes = len(trained.manifest.classes)
    rows = rows_for(cfg, source)
    runs = [RowRun(row, cfg) for row in rows]
    old = runs[0]
    served: dict[str, Any] = await serve_rows(cfg, work, trained, rows, runs, progress) if cfg.served_rows else {
        "rows": [], "served_source_miou": inprocess.miou(
            inprocess.predict(model, [image for image, _ in old.tests["old"]], stride),
            [mask for _, mask in old.tests["old"]], classes), "served_matches_in_process": None}
    labelled: list[dict[str, Any]] = []
    if cfg.labels:
        from weldstream.bench.adapt import labels  # labels builds on this module's rows

        t0 = time.monotonic()
        transform_runs = [run for run in runs if run.row.kind == "transform"]
        labelled = labels.label_rows(trained.learner, model, transform_runs, old, cfg.labels, cfg.label_steps,
                                     stride, classes, cfg.reference_scans)
        progress(f"{source}: {len(transform_runs)} rig(s) after {', '.join(map(str, cfg.labels))} labels "
                 f"({time.monotonic() - t0:.0f} s)")
    return {"source": source, "steps": trained.steps, "crop_size": cfg.crop_size,
            "validation_miou": trained.validation_miou, **served, "labels": labelled}


async def serve_rows(cfg: AdaptBench, work: Path, trained: Trained, rows: list[Row], runs: list[RowRun],
                     progress: Callable[[str], None]) -> dict[str, Any]:
    """Every row through real servers: count 0 on one without rig normalisation, then each row on its own."""
    source = trained.source
    model, stride = trained.model, ModelConfig.from_dict(trained.manifest.model_config).stride
    classes = len(trained.manifest.classes)
    ref = reference_count(list(cfg.counts))
    old = runs[0]
    results: list[dict[str, Any]] = []
    async with ServedModel(work / "models", work / "state-global", rig_normalisation=False, threads=cfg.threads,
                           in_flight=cfg.in_flight) as plain:
        scored = [await score_global(plain, run, classes) for run in runs]
    globals_ = [tally for tally, _ in scored]
    # the served masks of the old rig against the same scans segmented in-process: the same model, the same masks
    masks = inprocess.predict(model, [image for image, _ in old.tests["old"]], stride)
    agree = float(np.mean([np.mean(a == b.mask) for a, b in zip(masks, scored[0][1], strict=True)]))
    for index, (row, run) in enumerate(zip(rows, runs, strict=True)):
        t0 = time.monotonic()
        batch = 1 if row.plan == "batch-1" else 8
        result: dict[str, Any] = {**_describe(row), "miou": {"0": globals_[index].miou},
                                  "served_with": {"0": globals_[index].summary()}, "clone_scans": {}}
        async with ServedModel(work / "models", work / f"state-{index}", max_batch_size=batch, threads=cfg.threads,
                               in_flight=1 if row.plan == "batch-1" else cfg.in_flight) as served:
            for count in cfg.counts[1:]:
                tally, measured = await score_count(served, run, count, classes)
                result["miou"][str(count)] = tally.miou
                result["served_with"][str(count)] = tally.summary()
                result["clone_scans"][str(count)] = measured
            old_tally = await score_old_rig(served, old, classes)
        result["old_rig"] = {"miou": old_tally.miou, "served_with": old_tally.summary()}
        result["oracle"] = in_process(model, run, stride, classes)
        # what the rig's own statistics give whatever the server decided (a kept rig is served without them)
        result["in_process_at"] = {"count": ref, "miou": in_process(model, run, stride, classes, ref)}
        results.append(result)
        progress(f"{source} / {row.name}: " + ", ".join(f"{n}: {v:.3f}" for n, v in result["miou"].items())
                 + f", oracle {result['oracle']:.3f}, old rig {old_tally.miou:.3f} ({time.monotonic() - t0:.0f} s)")
    return {"rows": results, "served_source_miou": results[0]["miou"]["0"], "served_matches_in_process": agree}


def _describe(row: Row) -> dict[str, Any]:
    return {"name": row.name, "kind": row.kind, "model": row.model, "plan": row.plan, "description": row.description,
            "rig_ids": row.stems, "rigs": [rig.name for _, rig in row.streams]}


async def run_benchmark(cfg: AdaptBench, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="weldstream-bench-adapt-") as tmp:
        sources = []
        for source in cfg.sources:
            work = Path(tmp) / source
            work.mkdir()
            sources.append(await run_source(cfg, source, work, progress))
    return {"config": {**asdict(cfg), "min_scans": MIN_SCANS}, "sources": sources}
