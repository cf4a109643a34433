"""`weldstream bench review`: review-first vs random labelling, and the drift detector, in one process.

    weldstream bench review [--quick] [--seeds 3] [--out docs/benchmarks/review]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from weldstream.bench.review.config import ORACLE, STRATEGIES, ReviewBenchConfig
from weldstream.cli_args import parse_size

DEFAULT_OUT = Path("runs/bench-review")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a few minutes' pipeline check: one new domain, one seed")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    p.add_argument("--labels-per-domain", type=int, default=None, help="labelling budget per new domain (default 30)")
    p.add_argument("--steps-per-round", type=int, default=None, help="learner steps after each round of labels")
    p.add_argument("--size", type=parse_size, default=None, help="scan size (default 64x64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    p.add_argument("--served-per-round", type=int, default=None, help="scans served per round (default 30)")
    p.add_argument("--with-oracle", action="store_true",
                   help="add a diagnostic row that labels the scans with the most true defect pixels first")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    p.set_defaults(run=run)


def config_from(args: argparse.Namespace) -> ReviewBenchConfig:
    cfg = ReviewBenchConfig.quick_preset() if args.quick else ReviewBenchConfig()
    given = {"labels_per_domain": args.labels_per_domain, "steps_per_round": args.steps_per_round,
             "size": args.size, "threads": args.threads, "device": args.device,
             "served_per_round": args.served_per_round}
    changes: dict = {k: v for k, v in given.items() if v is not None}
    if args.with_oracle:
        changes["strategies"] = (*STRATEGIES, ORACLE)
    if args.seeds is not None or args.first_seed:
        count = args.seeds if args.seeds is not None else len(cfg.seeds)
        changes["seeds"] = tuple(range(args.first_seed, args.first_seed + count))
    return replace(cfg, **changes)


def run(args: argparse.Namespace) -> int:
    import torch

    from weldstream.bench.review.drift import measure_drift
    from weldstream.bench.review.labelling import TEST_SEED, render, run_seed, served_doubt
    from weldstream.bench.review.report import summarise, table, write_report

    cfg = config_from(args)
    torch.set_num_threads(cfg.threads)
    load_before = round(os.getloadavg()[0], 2)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {line}", file=sys.stderr, flush=True)

    curves, bases = [], []
    for seed in cfg.seeds:
        mine, base = run_seed(cfg, seed, progress)
        curves += mine
        bases.append(base)
    progress("drift detector, on the first seed's base model")
    drift = measure_drift(bases[0].model, cfg)
    learned = render(cfg.domains[0], TEST_SEED, cfg.test_per_domain, cfg.size)
    summary = summarise(cfg, curves, drift, float(served_doubt(bases[0].model, learned.x).mean()))
    environment = {"machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                              f"{cfg.threads} torch thread(s), {cfg.device}",
                   "load_before": load_before, "load_after": round(os.getloadavg()[0], 2),
                   "wall_s": round(time.monotonic() - started, 1)}
    command = "weldstream bench review " + shlex.join(sys.argv[sys.argv.index("review") + 1:]
                                                      if "review" in sys.argv else [])
    write_report(args.out, summary, command.strip(), environment)
    print(table(summary))
    print(f"\nreport: {args.out / 'report.md'}  ({environment['wall_s']} s, load {load_before} -> "
          f"{environment['load_after']})")
    return 0
