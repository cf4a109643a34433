"""`weldstream bench adapt`: new rigs served with BatchNorm statistics of their own, against a real server.

    weldstream bench adapt [--quick] [--out docs/benchmarks/adapt]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from weldstream.bench.adapt.config import STRESS, AdaptBench
from weldstream.cli_args import parse_size

DEFAULT_OUT = Path("docs/benchmarks/adapt")


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a pipeline check: a tiny ultrasonic version, two transforms, counts 0 and 8")
    p.add_argument("--steps", type=int, default=None, help="learner steps per version (default 500)")
    p.add_argument("--size", type=parse_size, default=None, help="scan size (default 128x128)")
    p.add_argument("--counts", type=_counts, default=None, help="scans sent before scoring (default 0,1,8,32,128)")
    p.add_argument("--test-scans", type=int, default=None, help="held-out scans scored per row (default 32)")
    p.add_argument("--sources", default=None,
                   help="comma-separated source domains, one version each (default: ut-pe100-5mhz and "
                        "xray-dda-steel-x70-inverted)")
    p.add_argument("--stress", default=None, help=f"comma-separated stress rows ({','.join(STRESS)}; '' for none)")
    p.add_argument("--labels", type=_counts, default=None,
                   help="labeled scans of each transform rig the learner learns before it is scored again "
                        "(default 4,16,64; '' for none)")
    p.add_argument("--label-steps", type=int, default=None,
                   help="optimiser steps the learner takes on those labels, the same for every count (default 96)")
    p.add_argument("--labels-only", action="store_true",
                   help="only the rows after labels (in-process), start no server; they replace the label rows of the "
                        "report already in --out, if any")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    p.set_defaults(run=run)


def config_from(args: argparse.Namespace) -> AdaptBench:
    cfg = AdaptBench.quick_preset() if args.quick else AdaptBench()
    return cfg.with_changes(
        steps=args.steps, size=args.size, counts=args.counts, labels=args.labels, label_steps=args.label_steps,
        served_rows=False if args.labels_only else None, test_scans=args.test_scans, threads=args.threads,
        sources=tuple(s for s in args.sources.split(",") if s) if args.sources is not None else None,
        stress=tuple(s for s in args.stress.split(",") if s) if args.stress is not None else None)


def _commit() -> str:
    """The checkout the run measured (``git describe --always --dirty``), or '' outside a git checkout."""
    import subprocess

    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def with_label_rows(report: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """A kept report with its label rows replaced by those of a ``--labels-only`` run (per source; its
    environment is kept beside the report's as ``labels_environment``)."""
    by_source = {source["source"]: source for source in labels["sources"]}
    for source in report["sources"]:
        if source["source"] in by_source:
            source["labels"] = by_source[source["source"]]["labels"]
    report["config"].update({key: labels["config"][key] for key in ("labels", "label_steps")})
    report["labels_environment"] = labels["environment"]
    return report


def run(args: argparse.Namespace) -> int:
    import torch

    from weldstream.bench.adapt.report import format_table, targets, write_report
    from weldstream.bench.adapt.runner import run_benchmark

    cfg = config_from(args)
    commit = _commit()  # the checkout measured: taken before the run, which can outlast edits to the tree
    load_before = round(os.getloadavg()[0], 2)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {line}", file=sys.stderr, flush=True)

    result = asyncio.run(run_benchmark(cfg, progress))
    command = "weldstream bench adapt " + shlex.join(sys.argv[sys.argv.index("adapt") + 1:]
                                                     if "adapt" in sys.argv else [])
    result["environment"] = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{cfg.threads} torch thread(s), cpu",
        "command": command.strip(), "commit": commit, "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 2),
        "wall_s": round(time.monotonic() - started, 1)}
    if not cfg.served_rows and (args.out / "results.json").exists():
        result = with_label_rows(json.loads((args.out / "results.json").read_text()), result)
    result["targets"] = targets(result)
    print(format_table(result))
    write_report(result, args.out)
    return 0
