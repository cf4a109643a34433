"""From runs to per-strategy figures (mean ± std over seeds, mIoU in points) and the stated targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from weldstream.bench.cl import metrics
from weldstream.bench.cl.config import CEILING, DEFAULT_STRATEGY
from weldstream.bench.cl.result import RunResult

AVALANCHE_ROWS = ("ewc", "si", "lfl", "avalanche-agem", "avalanche-gem")
POINTS = 100.0  # mIoU and Dice are reported in points (x 100)
STEP_KEYS = ("total_ms", "forward_backward_ms", "memory_ms", "update_ms")


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
        summary[strategy] = entry
    _add_gem_ratio(summary)
    _add_ceiling_share(summary)
    return summary


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

    naive_bwt, _ = _get(summary, "naive", "bwt")
    add("naive BWT <= -15 points (the stream really causes forgetting)", naive_bwt, -15.0, False, "points")
    acc, _ = _get(summary, DEFAULT_STRATEGY, "acc")
    ceiling, _ = _get(summary, CEILING, "acc")
    add(f"{DEFAULT_STRATEGY} (default) ACC >= {CEILING} ACC (same step budget)", acc, ceiling, True, "points")
    bwt, _ = _get(summary, DEFAULT_STRATEGY, "bwt")
    add(f"{DEFAULT_STRATEGY} (default) BWT >= -2 points", bwt, -2.0, True, "points")
    for other in ("replay", *AVALANCHE_ROWS):
        other_acc, _ = _get(summary, other, "acc")
        add(f"{DEFAULT_STRATEGY} (default) ACC >= {other} ACC + 3 points", acc, other_acc + 3.0, True, "points")
    return out
