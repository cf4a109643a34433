"""The review benchmark's summary, table and written report (report.md + results.json)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from weldstream.bench.review.config import ORACLE, ReviewBenchConfig
from weldstream.bench.review.drift import DriftResult
from weldstream.bench.review.labelling import Curve

TARGET_SHARE = 0.6  # review-first should reach random's final mIoU with at most this share of the labels


def _mean_curve(curves: list[Curve]) -> list[float]:
    return [statistics.fmean(values) for values in zip(*(c.miou for c in curves), strict=True)]


def _spread(curves: list[Curve]) -> list[float]:
    return [statistics.pstdev(values) for values in zip(*(c.miou for c in curves), strict=True)]


def labels_to_reach(labels: list[int], miou: list[float], target: float) -> int | None:
    """The fewest labels (a round's worth at a time) after which ``miou`` reaches ``target``."""
    return next((n for n, m in zip(labels, miou, strict=True) if n > 0 and m >= target), None)


def summarise(cfg: ReviewBenchConfig, curves: list[Curve], drift: DriftResult,
              learned_doubt: float | None = None) -> dict[str, Any]:
    domains: dict[str, Any] = {}
    for domain in cfg.domains[1:]:
        mine = {s: [c for c in curves if c.domain == domain and c.strategy == s] for s in cfg.strategies}
        labels = mine["random"][0].labels
        mean = {s: _mean_curve(cs) for s, cs in mine.items()}
        target = mean["random"][-1]
        needed = labels_to_reach(labels, mean["review-first"], target)
        per_seed = []
        for review, rand in zip(mine["review-first"], mine["random"], strict=True):
            n = labels_to_reach(labels, review.miou, rand.miou[-1])
            per_seed.append(None if n is None else n / cfg.labels_per_domain)
        oracle = mine.get(ORACLE)
        domains[domain] = {
            "oracle_labels_to_random_final": labels_to_reach(labels, mean[ORACLE], target) if oracle else None,
            "labels": labels,
            "miou_mean": {s: [round(v, 4) for v in m] for s, m in mean.items()},
            "miou_std": {s: [round(v, 4) for v in _spread(cs)] for s, cs in mine.items()},
            "random_final": round(target, 4),
            "review_first_labels_to_random_final": needed,
            "review_first_share_to_random_final": None if needed is None else needed / cfg.labels_per_domain,
            "per_seed_share": per_seed,
            "mean_doubt_labeled": {s: round(statistics.fmean(d for c in cs for d in c.mean_doubt_labeled), 4)
                                   for s, cs in mine.items()},
            "test_doubt_mean": {s: [round(statistics.fmean(v), 4) for v in zip(*(c.test_doubt for c in cs),
                                                                                 strict=True)]
                                for s, cs in mine.items() if all(c.test_doubt for c in cs)},
        }
    shares = [d["review_first_share_to_random_final"] for d in domains.values()]
    return {
        "config": cfg.to_dict(),
        "domains": domains,
        "target_met": all(s is not None and s <= TARGET_SHARE for s in shares),
        "learned_domain_doubt": learned_doubt,
        "drift": {
            "stable_scans": drift.stable_scans,
            "false_alarms": drift.false_alarms,
            "stable_max_score": round(drift.stable_max_score, 3),
            "switches": [asdict(s) for s in drift.switches],
            "all_flagged_within_window": all(s.flagged_after is not None for s in drift.switches),
        },
        "curves": [asdict(c) for c in curves],
    }


def _share(value: float | None) -> str:
    return "not within the budget" if value is None else f"{100 * value:.0f} % of the budget"


def table(summary: dict[str, Any]) -> str:
    lines = []
    for domain, d in summary["domains"].items():
        head = " | ".join(f"{n} labels" for n in d["labels"])
        lines += [f"**{domain}** (served mIoU on held-out scans, mean ± std over seeds)", "",
                  f"| strategy | {head} |", "|---" * (len(d["labels"]) + 1) + "|"]
        for strategy in d["miou_mean"]:
            cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(d["miou_mean"][strategy], d["miou_std"][strategy],
                                                                    strict=True))
            lines.append(f"| {strategy} | {cells} |")
        seeds = ", ".join("-" if s is None else f"{100 * s:.0f} %" for s in d["per_seed_share"])
        lines += ["", f"Labels review-first needs to reach random's final mIoU ({d['random_final']:.3f}): "
                      f"{_share(d['review_first_share_to_random_final'])} (per seed: {seeds}); "
                      f"mean doubt of the labeled scans: review-first {d['mean_doubt_labeled']['review-first']:.3f}, "
                      f"random {d['mean_doubt_labeled']['random']:.3f}."]
        if ORACLE in d["miou_mean"]:
            n = d.get("oracle_labels_to_random_final")
            lines.append(f"The {ORACLE} (a bound, not a strategy) reaches it with "
                         f"{_share(None if n is None else n / d['labels'][-1])}.")
        lines.append("")
    if summary.get("learned_domain_doubt") is not None:
        doubts = "; ".join(f"{domain} {d['test_doubt_mean']['random'][0]:.2f} before its labels, "
                           f"{d['test_doubt_mean']['review-first'][-1]:.2f} / {d['test_doubt_mean']['random'][-1]:.2f} "
                           "after them (review-first / random)"
                           for domain, d in summary["domains"].items() if d.get("test_doubt_mean"))
        lines += [f"Mean doubt of held-out scans: the learned domain {summary['learned_domain_doubt']:.2f}; "
                  f"{doubts}.", ""]
    drift = summary["drift"]
    lines += ["**Drift detector** (Page-Hinkley on the distance of pooled encoder features to the learned domain)", "",
              f"- stable rig, {drift['stable_scans']} scans of the learned domain: {drift['false_alarms']} false "
              f"alarms (highest drift score {drift['stable_max_score']:.2f})"]
    for s in drift["switches"]:
        flagged = "not flagged" if s["flagged_after"] is None else f"flagged after {s['flagged_after']} scans"
        review = "" if s["review_after"] is None else f", its scans go to review after {s['review_after']}"
        lines.append(f"- switch to {s['domain']}: {flagged}{review} (drift score {s['score_before']:.2f} before, "
                     f"{s['score_after']:.2f} after)")
    return "\n".join(lines)


def write_report(out: Path, summary: dict[str, Any], command: str, environment: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**summary, "environment": environment, "command": command},
                                                 indent=2) + "\n")
    cfg = summary["config"]
    text = [
        "# Review-first vs random labelling on a drifting stream", "",
        f"`{command}` — {environment.get('wall_s', '?')} s on {environment.get('machine', '?')} "
        f"(load average {environment.get('load_before', '?')} before the run).", "",
        f"The served model learned `{cfg['domains'][0]}` ({cfg['base_scans']} labeled scans, {cfg['base_steps']} "
        f"steps of the learner). Each new domain then arrives in {cfg['labels_per_domain'] // cfg['round_labels']} "
        f"rounds: the rig sends {cfg['served_per_round']} scans, the server answers them with their doubt, and "
        f"inspectors label {cfg['round_labels']}: the most doubted (review-first: every scan of a new rig is over "
        f"the review thresholds, and the labelling tool shows what `weld.scans.review` brought most doubted first) "
        f"or a random choice. The learner then takes {cfg['steps_per_round']} steps (crops of "
        f"{cfg['crop_size']} px, replay of the learned domain); the served "
        f"model's mIoU on {cfg['test_per_domain']} held-out scans of the domain is measured after each round. "
        f"Scans {cfg['size'][0]}x{cfg['size'][1]}, seeds {cfg['seeds']}.", "",
        table(summary), "",
        f"Target (review-first reaches random's final mIoU with at most {100 * TARGET_SHARE:.0f} % of the labels): "
        f"{'met' if summary['target_met'] else 'not met'} on every new domain."
        if summary["target_met"] else
        f"Target (review-first reaches random's final mIoU with at most {100 * TARGET_SHARE:.0f} % of the labels): "
        "not met; see the table.",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))


def rewrite_report(out: Path) -> None:
    """report.md again from results.json (after a change to how the report reads)."""
    data = json.loads((out / "results.json").read_text())
    environment, command = data.pop("environment"), data.pop("command")
    write_report(out, data, command, environment)
