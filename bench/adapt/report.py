"""The page of one `weldstream bench adapt` run: per version a table of served mIoU by scans sent, beside the
oracle and the source domain's own score, and the targets, each held or missed with the rows that miss it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from weldstream.simulator import get_domain

FLIP_ROW = "flip+gamma+noise+16-bit"
ORACLE_POINTS = 0.02  # a transform row within 2 points of its oracle by the reference count
GAIN_POINTS = 0.08  # each ultrasonic transform row gains at least 8 points
FLIP_SHARE = 0.88  # of the source domain's served mIoU
EARLY_SHARE = 0.8  # 8 scans give this share of the reference count's gain ...
EARLY_MIN_GAIN = 0.01  # ... on rows that gain at least a point
WORST_DROP = 0.01  # no rig served more than a point below count 0
OLD_RIG_POINTS = 0.005  # the old rig within half a point of its count-0 score


def reference_count(counts: list[int]) -> int:
    """The count the targets read: 32 scans, or the largest count below it when 32 is not measured."""
    return 32 if 32 in counts else max(counts)


def _gain(row: dict[str, Any], count: int) -> float:
    return row["miou"][str(count)] - row["miou"]["0"]


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target, with whether it holds and the rows that miss it (none without served rows)."""
    if not any(source["rows"] for source in result["sources"]):
        return []
    counts = list(result["config"]["counts"])
    ref = reference_count(counts)
    early = 8 if 8 in counts and 8 < ref else None
    checks: dict[str, list[str]] = {
        f"every transform row within {ORACLE_POINTS * 100:.0f} points of its oracle by {ref} scans": [],
        f"each ultrasonic transform row gains >= {GAIN_POINTS * 100:.0f} points by {ref} scans": [],
        f"the {FLIP_ROW} row reaches >= {FLIP_SHARE:.0%} of its source's served mIoU by {ref} scans": [],
        f"no rig at any count served more than {WORST_DROP * 100:.0f} point below count 0": [],
        f"the old rig keeps its score (within {OLD_RIG_POINTS * 100:.1f} points, every count and every server)": [],
    }
    names = list(checks)
    if early is not None:
        checks[f"{early} scans give >= {EARLY_SHARE:.0%} of the {ref}-scan gain (rows gaining >= 1 point)"] = []
    for source in result["sources"]:
        base = source["served_source_miou"]
        ultrasonic = get_domain(source["source"]).modality == "ultrasonic"
        for row in source["rows"]:
            label = f"{source['source']} / {row['name']}"
            miou = row["miou"]
            if row["kind"] == "transform":
                if miou[str(ref)] < row["oracle"] - ORACLE_POINTS:
                    checks[names[0]].append(f"{label}: {_pts(miou[str(ref)])} vs oracle {_pts(row['oracle'])}")
                if ultrasonic and _gain(row, ref) < GAIN_POINTS:
                    checks[names[1]].append(f"{label}: {_signed(_gain(row, ref))} points")
                if row["name"] == FLIP_ROW and miou[str(ref)] < FLIP_SHARE * base:
                    checks[names[2]].append(f"{label}: {miou[str(ref)] / max(base, 1e-9):.0%} of {_pts(base)}")
                if early is not None and _gain(row, ref) >= EARLY_MIN_GAIN and \
                        _gain(row, early) < EARLY_SHARE * _gain(row, ref):
                    checks[list(checks)[-1]].append(f"{label}: {_signed(_gain(row, early))} of "
                                                    f"{_signed(_gain(row, ref))} points")
            worst = min(counts[1:], key=lambda n: miou[str(n)], default=0)
            if counts[1:] and miou[str(worst)] < miou["0"] - WORST_DROP:
                checks[names[3]].append(f"{label}: {_signed(_gain(row, worst))} points at {worst} scans")
            old_scores = [row["old_rig"]["miou"]] + ([miou[str(n)] for n in counts] if row["kind"] == "old" else [])
            furthest = max(old_scores, key=lambda v: abs(v - base))
            if abs(furthest - base) > OLD_RIG_POINTS:
                checks[names[4]].append(f"beside {label}: {_signed(furthest - base)} points")
    return [{"target": name, "holds": not misses, "misses": misses} for name, misses in checks.items()]


def _pts(value: float) -> str:
    return f"{value * 100:.1f}"


def _signed(value: float) -> str:
    return f"{value * 100:+.1f}"


def _served(summary: dict[str, Any]) -> str:
    """How the scored scans were normalised: 'rig 8-11' (all by the rig's statistics from 8 to 11 scans),
    'version', 'version, gain 25.7 dB' (the version's, on scans corrected by the rig's gain curve), 'rig 8-11,
    gain 24.9 dB' (the rig's own, on corrected scans), with shares where not every scan was."""
    def share(n: int) -> str:
        return "" if n == summary["scored"] else f" ({n}/{summary['scored']})"

    parts = ["version"]
    if summary["rig"]:
        low, high = summary["rig_scans"]
        parts = [f"rig {low if low == high else f'{low}-{high}'}{share(summary['rig'])}"]
    if summary.get("gain"):
        parts.append(f"gain {summary['gain_db']:.1f} dB{share(summary['gain'])}")
    return ", ".join(parts)


def _run_of(env: dict[str, Any]) -> str:
    """A run measured apart from the report's: '`command`, wall s[, checkout X]'."""
    checkout = f", checkout {env['commit']}" if env.get("commit") else ""
    return f"`{env.get('command')}`, {env.get('wall_s')} s{checkout}"


def _decisions(clones: list[list[Any]]) -> str:
    """The server's decisions for a count's clones: 'adapt', 'keep', or counts of each."""
    counted: dict[str, int] = {}
    for _, decision in clones:
        counted[decision or "?"] = counted.get(decision or "?", 0) + 1
    if len(counted) == 1:
        return next(iter(counted))
    return ", ".join(f"{name} {n}" for name, n in sorted(counted.items()))


def _restarted(row: dict[str, Any], counts: list[int]) -> list[str]:
    """The counts at which some rig id of the row had fewer scans in its statistics than it had sent (it
    started over), right after adapting or by the scans its test scans were served with."""
    found = []
    for n in counts[1:]:
        clones = row["clone_scans"][str(n)]
        served = row["served_with"][str(n)]
        short = any(decision == "adapt" and scans < n for scans, decision in clones)
        if short or (served["rig"] and served["rig_scans"][0] < n):
            found.append(str(n))
    return found


def format_table(result: dict[str, Any]) -> str:
    cfg, env = result["config"], result.get("environment", {})
    counts = list(cfg["counts"])
    ref = reference_count(counts)
    size = "x".join(str(s) for s in cfg["size"])
    lines = [
        "# weldstream bench adapt: served mIoU of new rigs after N unlabeled scans, with per-rig BatchNorm "
        "statistics (AdaBN)",
        "",
        f"`{env.get('command', 'weldstream bench adapt')}` on {env.get('machine', '?')}, "
        f"{env.get('wall_s', '?')} s" + (f", checkout {env['commit']}." if env.get("commit") else ".")
        + (f" Note: {env['note']}." if env.get("note") else ""),
        "",
    ]
    if any(source["rows"] for source in result["sources"]):
        lines.append(
            f"One version per source domain, trained by the learner ({cfg['steps']} steps, crops of {cfg['crop_size']} "
            f"px, {cfg['train_scans']} labeled {size} scans), served by a real `weldstream serve` (eager torch) "
            f"from a directory store. Scores: mIoU over the defect classes of {cfg['test_scans']} held-out scans per "
            "row, as the server returned their masks over gRPC. Count 0 is a server with `--no-rig-normalisation`; "
            f"a count N is the row's test scans, each sent after N scans of the rig to a fresh rig id (the server's "
            f"own statistics of a rig are used from {cfg['min_scans']} scans on; before that it is served with the "
            "version's). *Decision*: the server's, per rig id scored at that count (keep: the version's statistics, "
            "the rig looks like a learned domain; gain: the version's, on scans corrected by the rig's gain curve "
            "against a learned domain's brightness profile; adapt: its own, on corrected scans if a gain is named). "
            f"*Served with*: the statistics that normalised the scored scans at {ref} scans (rig: the rig's own, "
            "from so many scans; gain: the span of the curve the scans were corrected by first). *Oracle*: "
            "BatchNorm statistics measured in-process from the test scans themselves; *own statistics "
            "in-process*: from the rig's first adaptation scans, whatever the server decided. *Old rig*: the source "
            "domain's own scans on that row's server, after the row.")
    else:
        lines.append(f"One version per source domain, trained by the learner ({cfg['steps']} steps, crops of "
                     f"{cfg['crop_size']} px, {cfg['train_scans']} labeled {size} scans); only the rows after labels "
                     "were run (`--labels-only`), in-process with the server's preprocessing.")
    apart = result.get("source_environments", {})  # sources measured again in a run of their own
    for source in result["sources"]:
        if not source["rows"]:
            continue
        base = source["served_source_miou"]
        lines += [
            "",
            f"## {source['source']}: served mIoU {_pts(base)} on its own scans (held-out score at publish "
            f"{_pts(source['validation_miou'])}; served masks equal the in-process ones on "
            f"{source['served_matches_in_process']:.2%} of pixels)",
            "",
        ]
        if source["source"] in apart:
            env_ = apart[source["source"]]
            lines += [f"Measured apart: {_run_of(env_)}" + (f" ({env_['note']})" if env_.get("note") else "") + ".", ""]
        lines += [
            "| rig | kind | " + " | ".join(f"{n} scans" for n in counts) + f" | oracle | own statistics in-process, "
            f"{ref} scans | % of source (0 → {ref}) | gain at {ref}, points | decision | served with at {ref} | "
            "old rig |",
            "| --- | --- | " + " | ".join("---" for _ in counts) + " | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in source["rows"]:
            miou = row["miou"]
            share = f"{miou['0'] / max(base, 1e-9):.0%} → {miou[str(ref)] / max(base, 1e-9):.0%}"
            lines.append(f"| {row['name']} | {row['kind']} | " + " | ".join(_pts(miou[str(n)]) for n in counts)
                         + f" | {_pts(row['oracle'])} | {_pts(row['in_process_at']['miou'])} | {share} | "
                         f"{_signed(_gain(row, ref))} | "
                         f"{_decisions(row['clone_scans'][str(ref)])} | {_served(row['served_with'][str(ref)])} | "
                         f"{_pts(row['old_rig']['miou'])} |")
        restarts = [f"{row['name']} at {', '.join(counts_)}" for row in source["rows"]
                    if (counts_ := _restarted(row, counts))]
        if restarts:
            lines += ["", "Started over (a drift event or a changed rig) before or while being scored: "
                      + "; ".join(restarts) + "."]
    lines += label_tables(result)
    if result["targets"]:
        lines += ["", "## Targets", ""]
    for target in result["targets"]:
        mark = "holds" if target["holds"] else "**missed**"
        lines.append(f"- {target['target']}: {mark}" + ("" if target["holds"] else
                                                        " (" + "; ".join(target["misses"]) + ")"))
    return "\n".join(lines) + "\n"


def _served_after(scores: dict[str, Any]) -> str:
    if "served" not in scores:
        return "?"
    return f"{_pts(scores['served'])} ({scores['decision']} at {scores['distance']:.1f})"


def label_tables(result: dict[str, Any]) -> list[str]:
    """Per version: each transform rig after k of its scans were labeled and learned, scored with the version's
    statistics and with the rig's own."""
    cfg = result["config"]
    lines: list[str] = []
    env = result.get("labels_environment")
    if env and any(source.get("labels") for source in result["sources"]):
        lines += ["", f"The rows after labels were measured apart: {_run_of(env)}."]
    for source in result["sources"]:
        rows = source.get("labels") or []
        if not rows:
            continue
        counts = ["0", *(str(k) for k in cfg["labels"])]
        lines += [
            "",
            f"## {source['source']}: after the rig's first labels ({cfg['label_steps']} learner steps whatever "
            "their count)",
            "",
            f"The version's learner goes on with k labeled scans of the rig as a new domain (its window holds only "
            f"them, its memory rehearses the source), {cfg['label_steps']} steps for every k; the weights it "
            "publishes score the rig's held-out scans in-process with the version's statistics (*version*) and "
            f"with the rig's own, measured from 32 of its unlabeled scans under the new weights (*own*). *Old rig*: "
            f"the source's scans under the new weights (the version itself: {_pts(source['served_source_miou'])}). "
            "*Served*: what the server serves the rig once those weights go live (keep: the version's statistics, the "
            "rig's scans within the keep distance of the references the learner publishes, the rig's own held-out "
            "labeled scans among them; adapt: its own; gain: the version's, on the rig's scans corrected by the gain "
            "curve the server fitted before any label, which every later version keeps; rig+gain: its own, measured "
            "on its corrected scans), with that median distance.",
            "",
            "| rig | " + " | ".join(f"{k} labels: version / own" for k in counts) + " | own − version, points by k "
            "| served by k | old rig by k |",
            "| --- | " + " | ".join("---" for _ in counts) + " | --- | --- | --- |",
        ]
        for row in rows:
            by = row["by_labels"]
            lines.append(
                f"| {row['name']} | "
                + " | ".join(f"{_pts(by[k]['version_statistics'])} / {_pts(by[k]['rig_statistics'])}" for k in counts)
                + " | " + ", ".join(_signed(by[k]["rig_statistics"] - by[k]["version_statistics"]) for k in counts)
                + " | " + ", ".join(_served_after(by[k]) for k in counts)
                + " | " + ", ".join(_pts(by[k]["old_rig"]) for k in counts) + " |")
        means = [sum(r["by_labels"][k]["rig_statistics"] - r["by_labels"][k]["version_statistics"] for r in rows)
                 / len(rows) for k in counts]
        lines += ["", "Mean gain of the rig's own statistics over the version's, by labels: "
                  + ", ".join(f"{k}: {_signed(m)}" for k, m in zip(counts, means, strict=True)) + " points."]
    return lines


def write_report(result: dict[str, Any], out: Path) -> None:
    """table.md and results.json side by side in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(format_table(result))
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
