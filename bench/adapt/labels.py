"""After the first labels: does a rig's own statistics still pay once the learner has learned its labeled scans?

For each transform rig the version's learner (its weights, optimiser, episodic memory of the source) goes
on with the rig's first k labeled scans as a new domain: its window holds only those k scans, its memory
rehearses the source, and it takes the same number of optimiser steps whatever k is, so the rows differ
only in how many labels the steps were drawn from. The weights it would publish are then scored on the
rig's held-out scans twice, in-process with the server's preprocessing: normalised with the version's
statistics (the learner alone) and with the rig's own, measured from its unlabeled adaptation scans under
the new weights (what the server re-estimates from the rig's reservoir before a version goes live). The
source's own scans under the new weights say what the rig's labels cost the old rig. And what the server does
when that version goes live: the version's drift references are built as the learner builds them, from
held-out labeled scans of each domain it learned (the source's, and ``max(2, k // 4)`` more of the rig's),
and a rig whose unlabeled scans lie within the server's keep distance of them goes back to the version's
statistics; any other keeps its own. A rig the server matched to the source by a gain curve before any label
(its first unlabeled scans, corrected, within the keep distance under the version) keeps the curve: every later
version serves its corrected scans with the version's statistics (*corrected*, scored at every k). A rig whose
corrected scans came only within the server's gain-adapt distance is served with its own statistics measured on
corrected scans (*corrected own*), until a version places its corrected scans within the keep distance.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from weldstream.bench.adapt import inprocess
from weldstream.bench.adapt.models import REFERENCE_SEED, labeled
from weldstream.bench.adapt.runner import RowRun, Tally, render
from weldstream.bench.adapt.transforms import Rig
from weldstream.features import encoder_summary, reference_of, stage_channels
from weldstream.gain_curve import GainCurve, match, mean_profile
from weldstream.learner.records import LabeledSample
from weldstream.learner.trainer import ContinualLearner
from weldstream.learner.window import TrainingWindow
from weldstream.preprocess import training_pair
from weldstream.server.config import ServerConfig
from weldstream.server.drift import References

LABEL_SEED = 5_000_000  # the rig's labeled scans: seeds no adaptation or test scan uses
HELD_OUT_SEED = 6_000_000  # the rig's held-out labeled scans (its drift reference in the new version)
KEEP_DISTANCE = ServerConfig().rig_keep_distance
MIN_GAIN_DB = ServerConfig().rig_min_gain_db
RIG_NORM = ServerConfig().rig_norm_settings  # what the server decides a gain curve by
MIN_SCANS = ServerConfig().rig_norm_min_scans  # the reservoir a server decides on
ADAPTATION_SCANS = 32  # unlabeled scans the rig's statistics are measured from


def rig_of(run: RowRun) -> Rig:
    """The physical rig of a transform row (one rig id, one rig)."""
    return run.row.rigs(run.row.stems[0])[0]


def rig_domain(rig: Rig) -> str:
    return f"{rig.source}/{rig.name}"


def learn_labels(state: dict[str, Any], learner: ContinualLearner, run: RowRun, k: int, steps: int
                 ) -> torch.nn.Module:
    """The weights the learner publishes after ``steps`` steps on the rig's first ``k`` labeled scans,
    continuing from ``state`` (the version's learner)."""
    cfg = replace(learner.cfg, decay_steps=max(1, steps // 3))
    twin = ContinualLearner(cfg, learner.device)
    twin.load_state_dict(copy.deepcopy(state))  # the optimiser would otherwise step the version's moments
    twin.window = TrainingWindow(cfg.window_scans, cfg.window_mb << 20, learner.device)  # the rig's scans only
    rig = rig_of(run)
    for i in range(k):
        image, mask = render(rig, LABEL_SEED + i, run.cfg.size)
        x, y = training_pair(image, mask)
        twin.add(LabeledSample(f"{rig.name}-label-{i}", rig_domain(rig), x, y, 0.0))
    twin.absorb()
    twin.budget = twin.steps + steps
    while twin.remaining() > 0:
        twin.train_for(32, max_seconds=1e9)
    return twin.published.eval()


def score(model: torch.nn.Module, run: RowRun, stride: int, classes: int,
          adaptation: list[np.ndarray] | None = None, gain: GainCurve | None = None) -> float:
    """mIoU of the row's test scans, normalised with the model's statistics, or with the rig's own measured
    from its unlabeled ``adaptation`` scans; corrected by the rig's ``gain`` curve first if given (the
    adaptation scans too)."""
    stem = run.row.stems[0]
    images = [image for image, _ in run.tests[stem]]
    moments = inprocess.rig_moments(model, adaptation, stride, gain=gain) if adaptation is not None else None
    tally = Tally(classes)
    predicted_masks = inprocess.predict(model, images, stride, moments, gain)
    for predicted, (_, mask) in zip(predicted_masks, run.tests[stem], strict=True):
        tally.add(predicted, mask)
    return tally.miou


def server_decision(model: torch.nn.Module, run: RowRun, k: int, source_held_out: torch.Tensor,
                    adaptation: list[np.ndarray], stride: int, gain: GainCurve | None = None) -> tuple[str, float]:
    """The server's decision once these weights go live, and the median drift distance it rests on: the
    rig's unlabeled scans against the references the learner would publish (source, and the rig after labels)."""
    stats = {run.row.model: reference_of(encoder_summary(model, source_held_out, stride), stage_channels(model))}
    if k:
        rig = rig_of(run)
        held_out = [render(rig, HELD_OUT_SEED + i, run.cfg.size)[0] for i in range(max(2, k // 4))]
        stats[rig_domain(rig)] = reference_of(encoder_summary(model, torch.stack(inprocess.normalised(held_out)),
                                                              stride), stage_channels(model))
    references = References.from_stats(stats, stage_channels(model))
    assert references is not None
    distance = median_distance(model, references, adaptation, stride, gain)
    return ("keep" if distance <= KEEP_DISTANCE else "adapt"), distance


def median_distance(model: torch.nn.Module, references: References, images: list[np.ndarray], stride: int,
                    gain: GainCurve | None = None) -> float:
    scans = torch.stack(inprocess.normalised(images, gain))
    return float(np.median([references.distance(row.numpy())[0] for row in encoder_summary(model, scans, stride)]))


def server_gain(model: torch.nn.Module, run: RowRun, source_held_out: torch.Tensor, adaptation: list[np.ndarray],
                stride: int) -> tuple[GainCurve | None, float]:
    """The gain curve the server fits for the rig before any label (on its first ``MIN_SCANS`` scans against the
    source's brightness profile, as the version's manifest carries it), if the corrected scans come within the
    gain-adapt distance; with their median drift distance."""
    first = adaptation[:MIN_SCANS]
    references = References.from_stats({run.row.model: reference_of(encoder_summary(model, source_held_out, stride),
                                                                     stage_channels(model))}, stage_channels(model))
    assert references is not None
    curve = match([inprocess.raw(image) for image in first], mean_profile([source_held_out]), run.row.model)
    if curve.span_db < MIN_GAIN_DB:
        return None, float("nan")
    distance = median_distance(model, references, first, stride, curve)
    return (curve if RIG_NORM.corrected_decision(distance, curve.span_db) is not None else None), distance


def label_rows(learner: ContinualLearner, model: torch.nn.Module, runs: list[RowRun], old: RowRun,
               labels: tuple[int, ...], steps: int, stride: int, classes: int, reference_scans: int
               ) -> list[dict[str, Any]]:
    """Per transform row and k (0 = the version itself): the rig with the version's statistics and with its
    own, and the old rig, each after the k labels were learned."""
    state = learner.state_dict()
    source_held_out = torch.stack([s.x for s in labeled(old.row.model, REFERENCE_SEED, reference_scans,
                                                        old.cfg.size)])
    rows = []
    for run in runs:
        adaptation = run.adaptation(0, ADAPTATION_SCANS, 0)
        by_k: dict[str, dict[str, float]] = {}
        curve: GainCurve | None = None
        corrected_own = False  # the server adapted the rig on its corrected scans
        for k in (0, *labels):
            weights = model if k == 0 else learn_labels(state, learner, run, k, steps)
            scores = {"version_statistics": score(weights, run, stride, classes),
                      "rig_statistics": score(weights, run, stride, classes, adaptation),
                      "old_rig": score(weights, old, stride, classes)}
            decision, distance = server_decision(weights, run, k, source_held_out, adaptation, stride)
            if k == 0 and decision == "adapt":
                curve, matched = server_gain(weights, run, source_held_out, adaptation, stride)
                corrected_own = curve is not None and matched > KEEP_DISTANCE
            if curve is not None:  # kept by every later version: the distance its corrected scans sit at
                scores["corrected"] = score(weights, run, stride, classes, gain=curve)
                distance = server_decision(weights, run, k, source_held_out, adaptation, stride, curve)[1]
                decision = "gain"
                if corrected_own:
                    scores["corrected_own"] = score(weights, run, stride, classes, adaptation, gain=curve)
                    decision = "gain" if k and distance <= KEEP_DISTANCE else "rig+gain"
            scores["served"] = scores[{"keep": "version_statistics", "adapt": "rig_statistics",
                                       "gain": "corrected", "rig+gain": "corrected_own"}[decision]]
            by_k[str(k)] = {**scores, "decision": decision, "distance": distance}
        rows.append({"name": run.row.name, "by_labels": by_k})
    return rows
