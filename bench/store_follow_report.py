"""The page of one `weldstream bench store` run: per store, how long a published version took to be answered by
every replica, and the bucket's cost over a shared directory as one ratio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LABELS = {"directory": "shared directory (both replicas on one --model-dir)",
          "s3": "S3 bucket (SeaweedFS; a --model-dir cache per replica)"}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown report of one run."""
    cfg, rows = result["config"], result["rows"]
    lines = [
        f"# weldstream bench store: seconds from publish() to {cfg['replicas']} replicas answering with the version "
        f"(servers on --backend {cfg['server_backend']}, for a fast start)",
        "",
        f"{cfg['versions']} versions per store ({cfg['version_mb']} MB of weights each), one every "
        f"{cfg['interval_s']:g} s or once the previous one is everywhere; announced on weld.models (embedded "
        f"broker) as the learner does, store polls every {cfg['poll_interval_s']:g} s as a fallback; each replica "
        f"called every {cfg['probe_every_s'] * 1000:.0f} ms with a 64 x 64 scan. {cfg['cpu_count']} CPUs, "
        f"1 thread per server, torch {cfg['torch']}.",
        "",
        "| backend | versions | median s | max s | failed calls |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {LABELS[name]} | {len(row['seconds'])} | {row['median_s']:.2f} | {row['max_s']:.2f} | "
              f"{row['failed_calls']} of {row['calls']} |" for name, row in rows.items()]
    lines += ["", f"S3 ÷ directory, medians: **{result['ratio_s3_over_directory']:.2f}×**"]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path) -> None:
    """table.md and results.json side by side in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(format_table(result))
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
