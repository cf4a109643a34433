"""The benchmark's outputs: report.md (table, stream, sizes, targets), results.json and results.csv."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from weldstream.bench.cl.config import CEILING, DEFAULT_STRATEGY
from weldstream.bench.cl.result import RunResult
from weldstream.bench.cl.summary import run_metrics

NOTES = (
    "Every weldstream row (offline-joint, joint-cumulative, naive, replay, replay-gem, gem, agem) is the learner "
    "itself (`ContinualLearner`: native-size crops, augmentation, AdamW with warm-up and anneal, reservoir "
    "memory, `gem_step`) with only its strategy changed; see `harness.py`.",
    "Every strategy takes the same number of optimiser steps per domain, each on the same number of scans; "
    "Avalanche strategies see each domain's scans repeated to exactly that many batches, in one epoch.",
    "offline-joint spends the whole budget i.i.d. over every domain: its rows are snapshots, so its BWT, FWT "
    "and forgetting are not continual-learning figures (shown as n/a); its ACC is the ceiling.",
    "Avalanche GEM computes one reference gradient per past domain on all of that domain's stored patterns at "
    "every step; weldstream's GEM recomputes one past domain's reference per step on `memory_batch` stored "
    "crops (round robin) and reuses the others. Both keep the same number of scans per domain.",
    "Avalanche 0.6.0's LFL leaves the model in eval mode after computing its features; the harness switches it "
    "back to train mode after the penalty, otherwise BatchNorm would stop adapting after the first domain.",
    "Regularisation strengths (EWC, SI, LFL) are ContinualAI continual-learning-baselines' permuted-MNIST "
    "values, not tuned here; no strategy was tuned on this stream.",
    "Peak RSS is the worker process's high-water mark (one process per run); it includes the interpreter, "
    "torch and, for Avalanche strategies, Avalanche's imports.",
)

CSV_METRICS = ("acc", "bwt", "fwt", "max_forgetting", "old_domains", "acc_dice", "first_domain_final",
               "first_domain_baseline")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=1, default=str, allow_nan=True) + "\n")


def write_csv(path: Path, results: list[RunResult]) -> None:
    """One row per (strategy, seed); metric columns in mIoU points, times in ms."""
    columns = ["strategy", "seed", *CSV_METRICS, "step_ms", "forward_backward_ms", "memory_ms", "update_ms",
               "last_domain_step_ms", "peak_rss_mb", "start_rss_mb", "train_s", "error"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in results:
            row: dict[str, Any] = {"strategy": r.strategy, "seed": r.seed, "error": r.error or ""}
            if r.error is None and r.miou:
                row.update({k: round(v, 3) for k, v in run_metrics(r).items() if k in CSV_METRICS})
                row.update(step_ms=round(r.step_ms["total_ms"], 2),
                           forward_backward_ms=round(r.step_ms["forward_backward_ms"], 2),
                           memory_ms=round(r.step_ms["memory_ms"], 2), update_ms=round(r.step_ms["update_ms"], 2),
                           last_domain_step_ms=round(r.step_ms_per_domain[-1]["total_ms"], 2),
                           peak_rss_mb=round(r.peak_rss_mb, 1), start_rss_mb=round(r.start_rss_mb, 1),
                           train_s=round(r.train_s, 1))
            writer.writerow(row)


def _pm(values: list[float] | None, digits: int = 1) -> str:
    if not values or math.isnan(values[0]):
        return "n/a"
    mean, std = values
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _interval(values: list[float] | None, signed: bool = False) -> str:
    """mean ± half-width of the 95 % interval (the mean alone where one value has no interval)."""
    if not values or math.isnan(values[0]):
        return "n/a"
    mean, half = values
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return text if math.isnan(half) else f"{text} ± {half:.1f}"


def interval_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The table that decides: ACC and BWT with 95 % intervals, and each row's paired difference to the
    default over the seeds both ran."""
    lines = [
        "| strategy | seeds | ACC (95 % interval) | Δ ACC to default, paired | BWT (95 % interval) "
        "| Δ BWT to default, paired | projected steps | last-quarter gain of the domain being learned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for strategy, e in summary.items():
        if not e.get("runs_ok"):
            lines.append(f"| {strategy} | 0 | failed |" + " |" * 5)
            continue
        name = f"{strategy} (default)" if strategy == DEFAULT_STRATEGY else strategy
        paired = e.get("paired_to_default", {})
        interval = e.get("interval95", {})
        bwt = "n/a" if strategy == CEILING else _interval(interval.get("bwt"))
        d_bwt = "n/a" if strategy == CEILING else _interval(paired.get("bwt"), signed=True)
        share = e.get("projected_share", math.nan)
        plateau = e.get("plateau_gain")
        gain = "n/a" if not plateau else f"{plateau['mean']:+.1f} (max {plateau['max']:+.1f})"
        lines.append(
            f"| {name} | {e['runs_ok']} | {_interval(interval.get('acc'))} "
            f"| {'—' if strategy == DEFAULT_STRATEGY else _interval(paired.get('acc'), signed=True)} "
            f"| {bwt} | {'—' if strategy == DEFAULT_STRATEGY else d_bwt} "
            f"| {'n/a' if share is None or math.isnan(share) else f'{100 * share:.1f} %'} "
            f"| {gain} |")
    return lines


def _table(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| strategy | ACC | share of ceiling | BWT | FWT | max forgetting | ACC (Dice) | step ms (all domains) "
        "| fwd/bwd ms | memory/proj ms | step ms (last domain) | × Avalanche GEM step (last) | train s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    footnotes = []
    for strategy, e in summary.items():
        if not e.get("runs_ok"):
            footnotes.append(f"- **{strategy}** failed: " + "; ".join(e["errors"]))
            lines.append(f"| {strategy} | failed (see below) |" + " |" * 12)
            continue
        m, step, last = e["metrics"], e["step_ms"], e["last_domain_step_ms"]
        ratio = e["ratio_to_avalanche_gem_last"]
        runs = "" if e["runs_ok"] == e["runs_total"] else f" ({e['runs_ok']}/{e['runs_total']} seeds)"
        name = f"{strategy} (default)" if strategy == DEFAULT_STRATEGY else strategy
        share = e.get("share_of_ceiling", math.nan)
        bwt, fwt, forgetting = (("n/a",) * 3 if strategy == CEILING
                                else (_pm(m["bwt"]), _pm(m["fwt"]), _pm(m["max_forgetting"])))
        lines.append(
            f"| {name}{runs} | {_pm(m['acc'])} | {'n/a' if math.isnan(share) else f'{100 * share:.0f} %'} "
            f"| {bwt} | {fwt} | {forgetting} "
            f"| {_pm(m['acc_dice'])} | {_pm(step['total_ms'], 0)} | {_pm(step['forward_backward_ms'], 0)} "
            f"| {_pm(step['memory_ms'], 0)} | {_pm(last['total_ms'], 0)} "
            f"| {'n/a' if math.isnan(ratio) else f'{ratio:.2f}'} | {_pm(e['train_s'], 0)} "
            f"| {_pm(e['peak_rss_mb'], 0)} |"
        )
        if e["errors"]:
            footnotes.append(f"- **{strategy}** partly failed: " + "; ".join(e["errors"]))
    return lines + ([""] + footnotes if footnotes else [])


def _targets(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | bound | met | margin |", "|---|---|---|---|---|"]
    for t in targets:
        met = "not measured" if t["met"] is None else ("**yes**" if t["met"] else "**no**")
        unit = "" if t["unit"] == "x" else " pts"
        fmt = "{:.2f}" if t["unit"] == "x" else "{:.1f}"
        value = "n/a" if math.isnan(t["value"]) else fmt.format(t["value"]) + unit
        bound = "n/a" if math.isnan(t["bound"]) else fmt.format(t["bound"]) + unit
        margin = "" if math.isnan(t["margin"]) else ("met by " if t["margin"] >= 0 else "missed by ") + fmt.format(
            abs(t["margin"])) + unit
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(f"| {t['target']}{note} | {value} | {bound} | {met} | {margin} |")
    return lines


def _run_notes(cfg: dict[str, Any]) -> str:
    """Say where Avalanche's rows ran on fewer seeds, and where runs shared the cores."""
    notes = []
    n = cfg.get("avalanche_seeds")
    if n is not None and n < len(cfg["seeds"]):
        notes.append(f"Avalanche's rows on seeds {cfg['seeds'][:n]} only, to fit the run's time")
    if cfg.get("parallel", 1) > 1:
        notes.append(f"{cfg['parallel']} runs at once, so step times share the cores")
    return f" ({'; '.join(notes)})" if notes else ""


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    cfg, run = payload["config"], payload["run"]
    summary, stream = payload["summary"], payload["stream"]
    size = "×".join(str(v) for v in cfg["size"])
    lines = [
        "# Continual-learning benchmark: the learner's strategies against Avalanche's, at one step budget",
        "",
        f"Command: `{run['command']}`  ",
        f"Wall time: {run['wall_s'] / 60:.1f} min on {run['machine']}; load average {run['loadavg_start']} at the "
        f"start, {run['loadavg_end']} at the end (other work on the machine inflates step times).  ",
        f"Mode: {'quick (pipeline check, not a result)' if cfg['quick'] else 'full'}; seeds {cfg['seeds']}"
        + _run_notes(cfg) + "."
        + (f" {run['reused']} runs reused from earlier invocations of the same configuration, {run['ran']} run "
           "in this one (the wall time is this one's)." if run.get("reused") else ""),
        *([""] if run.get("updates") else []),
        *[f"Rerun later (`--update`), same data and budget: {', '.join(u['strategies'])} on {u['finished']}, "
          f"`{u['command']}`, {u['wall_s'] / 60:.1f} min on {u['machine']}.  " for u in run.get("updates", [])],
        "",
        "## Stream",
        "",
        f"Domain-incremental, {len(stream)} domains in this order ({payload['source']}); every strategy trains on "
        f"the same tensors and is tested on every domain's test split after each domain. Scans rendered at "
        f"{size} and learned at that native size.",
        "",
        "| # | domain | modality | train scans | test scans | defect pixels % |",
        "|---|---|---|---|---|---|",
        *[f"| {i} | {d['domain']} | {d['modality']} | {d['train']} | {d['test']} | {d['defect_pixels_pct']} |"
          for i, d in enumerate(stream)],
        "",
        "## Shared budget",
        "",
        "Model `build_model(ModelConfig())` (smp U-Net, mobilenet_v2, random init, same seed per run; the "
        "learner's rows with its polarity head, taught by the labels, Avalanche's rows the plain network) · AdamW "
        f"lr {cfg['learning_rate']} · {cfg['steps_per_domain']} steps per domain for every strategy, each on "
        f"{cfg['batch_size'] + cfg['rehearsal']} scans ({cfg['batch_size']} current + {cfg['rehearsal']} from "
        f"memory for replay and replay-gem) · gradient clip {cfg['clip_norm']} (after any projection) · loss "
        f"`segmentation_loss` (class-balanced CE + soft Dice) · memory {cfg['memory_per_domain']} scans per "
        f"domain for every memory-based method · {cfg['memory_batch']} scans per reference gradient · "
        f"{cfg['threads']} torch threads · device {cfg.get('device', 'cpu')} · seeds vary the initialisation, "
        "batch order, crops and memory sampling; the data are fixed.",
        "",
        "## Results",
        "",
        f"Regime: **{cfg.get('regime', 'step-bound')}**, {cfg['steps_per_domain']} steps a domain. "
        "95 % intervals are Student's t over seeds; a paired difference is taken seed by seed against the "
        "default (same initialisation and data order), so it is narrower than the rows' own intervals. "
        "Projected steps: the share of steps whose gradient was projected. Last-quarter gain: how much the "
        "domain being learned still rose, in points, over the last quarter of its steps (its test mIoU after "
        "3/4 of its steps against after all of them), mean over domains and seeds, and the largest.",
        "",
        *interval_table(summary),
        "",
        "mIoU over the defect classes (background excluded) in points (×100), mean ± std over seeds. "
        "ACC = mean of the last row of the accuracy matrix; BWT = mean over earlier domains of (final − "
        "just-learned); FWT = mean over later domains of (score before training on it − random-init score); "
        "max forgetting = largest drop from a domain's best score to its final one. Step times are the mean "
        "wall time of one training step; fwd/bwd is the current batch's forward and backward pass, "
        "memory/proj everything the method adds (memory gradients, projection, penalties, memory update).",
        "",
        *_table(summary),
        "",
        "## Targets",
        "",
        *_targets(payload["targets"]),
        "",
        "## How each strategy is set up",
        "",
        *[f"- **{s}**: {e['setup'] or 'n/a'}" for s, e in summary.items()],
        "",
        "Notes:",
        "",
        *[f"- {note}" for note in NOTES],
        "",
        "## Figures",
        "",
        "![mean mIoU over earlier domains](old_domains.png)",
        "",
        "![step time by phase](step_time.png)",
        "",
        *[f"![{s} accuracy matrix](matrix_{s}.png)" for s, e in summary.items() if e.get("runs_ok")],
        "",
        "Raw numbers: `results.json` (accuracy matrices, per-domain step times, per run) and `results.csv`.",
        "",
    ]
    path.write_text("\n".join(lines))
