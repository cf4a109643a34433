"""From runs to per-strategy figures (mean ± std over seeds, mIoU in points) and the stated targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from weldstream.bench.cl import metrics
from weldstream.bench.cl.config import BOUNDS, CEILING, DEFAULT_STRATEGY
from weldstream.bench.cl.result import RunResult

AVALANCHE_ROWS = ("ewc", "si", "lfl", "avalanche-agem", "avalanche-gem")
POINTS = 100.0  # mIoU and Dice are reported in points (x 100)
STEP_KEYS = ("total_ms", "forward_backward_ms", "memory_ms", "update_ms")
INTERVAL_KEYS = ("acc", "bwt")  # the figures given with a 95 % interval and a paired difference to the default


def run_metrics(run: RunResult) -> dict[str, float]:
    """One run's CL metrics in points: mIoU-based, plus ACC on Dice."""
    out = {k: POINTS * v for k, v in metrics.summarise(run.miou, run.baseline_miou).items()}
    out["acc_dice"] = POINTS * metrics.acc(run.dice)
    out["first_domain_final"] = POINTS * run.miou[-1][0]
    out["first_domain_baseline"] = POINTS * run.baseline_miou[0]
    return out


def summarise(results: Sequence[RunResult], strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per strategy: metrics and step times as [mean, std], errors, mean accuracy matrix, old-domain curve."""
    summary: dict[str, dict[str, Any]] = {}
    for strategy in strategies:
        runs = [r for r in results if r.strategy == strategy]
        ok = [r for r in runs if r.error is None and r.miou]
        entry: dict[str, Any] = {
            "setup": next((r.setup for r in runs if r.setup), ""),
            "runs_ok": len(ok),
            "runs_total": len(runs),
            "errors": sorted({f"seed {r.seed}: {r.error}" for r in runs if r.error}),
        }
        if ok:
            per_run = [run_metrics(r) for r in ok]
            entry["metrics"] = {k: list(metrics.mean_std([m[k] for m in per_run])) for k in per_run[0]}
            entry["step_ms"] = {k: list(metrics.mean_std([r.step_ms[k] for r in ok])) for k in STEP_KEYS}
            entry["last_domain_step_ms"] = {
                k: list(metrics.mean_std([r.step_ms_per_domain[-1][k] for r in ok])) for k in STEP_KEYS
            }
            entry["peak_rss_mb"] = list(metrics.mean_std([r.peak_rss_mb for r in ok]))
            entry["start_rss_mb"] = list(metrics.mean_std([r.start_rss_mb for r in ok]))
            entry["train_s"] = list(metrics.mean_std([r.train_s for r in ok]))
            entry["miou_matrix"] = metrics.mean_matrix([r.miou for r in ok])
            entry["old_domains_curve"] = [POINTS * v for v in _mean_curves([metrics.old_so_far(r.miou) for r in ok])]
            entry["interval95"] = {k: list(metrics.interval95([m[k] for m in per_run])) for k in INTERVAL_KEYS}
            entry["seeds"] = sorted(r.seed for r in ok)
            entry["guarded_share"] = _share(ok, "guarded_steps")
            entry["projected_share"] = _share(ok, "projected_steps")
            plateaus = [POINTS * (end - before) for r in ok for before, end in r.plateau]
            if plateaus:
                entry["plateau_gain"] = {"mean": metrics.mean_std(plateaus)[0], "max": max(plateaus)}
        summary[strategy] = entry
    _add_paired(summary, results)
    _add_gem_ratio(summary)
    _add_ceiling_share(summary)
    return summary


def _share(runs: Sequence[RunResult], field: str) -> float:
    """A step count over all of a strategy's runs as a share of their steps (nan where a run did not count)."""
    steps = sum(r.step_ms.get("steps", 0) for r in runs)
    counts = [getattr(r, field) for r in runs]
    return sum(counts) / steps if steps and None not in counts else math.nan


def _add_paired(summary: dict[str, dict[str, Any]], results: Sequence[RunResult]) -> None:
    """Each row's difference to the default, seed by seed (the same seed shares the initialisation and the
    data order, so the pairs cancel what the seed alone decides), with its 95 % interval."""
    by_seed = {r.seed: run_metrics(r) for r in results
               if r.strategy == DEFAULT_STRATEGY and r.error is None and r.miou}
    for strategy, entry in summary.items():
        runs = [r for r in results if r.strategy == strategy and r.error is None and r.miou and r.seed in by_seed]
        if strategy == DEFAULT_STRATEGY or not runs:
            continue
        own = {r.seed: run_metrics(r) for r in runs}
        entry["paired_to_default"] = {
            k: list(metrics.interval95([own[s][k] - by_seed[s][k] for s in sorted(own)])) for k in INTERVAL_KEYS}
        entry["paired_seeds"] = len(own)


def best_within_interval(summary: dict[str, dict[str, Any]]) -> tuple[bool | None, list[str]]:
    """Is the default the best continual row within its interval? False when some row's paired ACC
    difference has its whole 95 % interval above zero; the rows that beat it are returned."""
    rows = {s: e["paired_to_default"]["acc"] for s, e in summary.items()
            if s not in BOUNDS and "paired_to_default" in e and e.get("paired_seeds", 0) >= 2}
    if DEFAULT_STRATEGY not in summary or not rows:
        return None, []
    better = [s for s, (mean, half) in rows.items() if mean - half > 0]
    return not better, better


def _add_ceiling_share(summary: dict[str, dict[str, Any]]) -> None:
    """Each strategy's ACC as a share of the offline-joint ceiling's (mean over seeds of both)."""
    ceiling = summary.get(CEILING, {}).get("metrics", {}).get("acc", [math.nan])[0]
    for entry in summary.values():
        acc = entry.get("metrics", {}).get("acc", [math.nan])[0]
        entry["share_of_ceiling"] = acc / ceiling if ceiling and not math.isnan(ceiling) else math.nan


def _mean_curves(curves: list[list[float]]) -> list[float]:
    return [metrics.mean_std([c[i] for c in curves])[0] for i in range(len(curves[0]))]


def _add_gem_ratio(summary: dict[str, dict[str, Any]]) -> None:
    """Each strategy's last-domain step time over Avalanche GEM's (the target compares weldstream GEM's)."""
    reference = summary.get("avalanche-gem", {}).get("last_domain_step_ms", {}).get("total_ms", [math.nan])[0]
    for entry in summary.values():
        own = entry.get("last_domain_step_ms", {}).get("total_ms", [math.nan])[0]
        entry["ratio_to_avalanche_gem_last"] = own / reference if reference and not math.isnan(reference) else math.nan


def _get(summary: dict[str, dict[str, Any]], strategy: str, key: str) -> tuple[float, float]:
    values = summary.get(strategy, {}).get("metrics", {}).get(key)
    return (values[0], values[1]) if values else (math.nan, math.nan)


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target: what it asks, the measured value, whether it was met and the margin (positive = met by)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, bound: float, higher_is_better: bool, unit: str, note: str = "") -> None:
        if math.isnan(value) or math.isnan(bound):
            out.append({"target": name, "value": value, "bound": bound, "met": None, "margin": math.nan,
                        "unit": unit, "note": note or "not measured (a run failed or the strategy was not run)"})
            return
        margin = value - bound if higher_is_better else bound - value
        out.append({"target": name, "value": value, "bound": bound, "met": margin >= 0, "margin": margin,
                    "unit": unit, "note": note})

    verdict, better = best_within_interval(summary)
    acc, _ = _get(summary, DEFAULT_STRATEGY, "acc")
    if verdict is None:
        out.append({"target": f"{DEFAULT_STRATEGY} (default) is the best continual row within its 95 % interval",
                    "value": acc, "bound": math.nan, "met": None, "margin": math.nan, "unit": "points",
                    "note": "needs the default and another row on at least 2 shared seeds"})
    else:
        out.append({"target": f"{DEFAULT_STRATEGY} (default) is the best continual row within its 95 % interval",
                    "value": acc, "bound": math.nan, "met": verdict, "margin": math.nan, "unit": "points",
                    "note": "no row's paired ACC difference is above zero over its whole interval" if verdict
                    else f"beaten by {', '.join(better)}"})
    naive_bwt, _ = _get(summary, "naive", "bwt")
    add("naive BWT <= -15 points (the stream really causes forgetting)", naive_bwt, -15.0, False, "points")
    ceiling, _ = _get(summary, CEILING, "acc")
    add(f"{DEFAULT_STRATEGY} (default) ACC >= {CEILING} ACC (same step budget)", acc, ceiling, True, "points")
    bwt, _ = _get(summary, DEFAULT_STRATEGY, "bwt")
    add(f"{DEFAULT_STRATEGY} (default) BWT >= -2 points", bwt, -2.0, True, "points")
    for other in AVALANCHE_ROWS:
        if other in summary:
            other_acc, _ = _get(summary, other, "acc")
            add(f"{DEFAULT_STRATEGY} (default) ACC >= {other} ACC + 3 points", acc, other_acc + 3.0, True, "points")
    return out
