"""`weldstream bench cl`: the continual-learning benchmark, from arguments to a written report.

    weldstream bench cl [--quick] [--regime step-bound|long] [--seeds 5] [--data DIR] [--out DIR]

Finished runs are kept (``stored``): run again with more seeds or rows and only the missing runs train.

``add_arguments`` fills a parser (the lead's CLI or ``python -m weldstream.bench.cl``) and
``run`` builds the one ``BenchConfig``, the stream, runs every strategy and writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import tempfile
import time
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from weldstream.bench.cl.config import REGIMES, STRATEGIES, BenchConfig
from weldstream.bench.cl.plots import plot_all
from weldstream.bench.cl.report import write_csv, write_json, write_markdown
from weldstream.bench.cl.result import RunResult
from weldstream.bench.cl.runner import all_pairs, run_all
from weldstream.bench.cl.stored import RunStore, load_stored, run_key
from weldstream.bench.cl.stream import build_stream
from weldstream.bench.cl.summary import summarise, targets
from weldstream.cli_args import parse_size

DEFAULT_OUT = {"step-bound": Path("runs/bench-cl"), "long": Path("runs/bench-cl-long")}
DEFAULT_SEEDS = 5


def _strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown strategies {unknown}; choose from {','.join(STRATEGIES)}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="minutes-long pipeline check: 3 domains, tiny splits, 1 seed")
    p.add_argument("--regime", choices=list(REGIMES), default="step-bound",
                   help="step-bound (default): 150 steps a domain, every strategy; long: 600 steps a domain, where "
                        "forgetting decides, on naive, replay and replay-gem")
    p.add_argument("--seeds", type=int, default=None, help=f"number of seeds (default {DEFAULT_SEEDS}, quick 1)")
    p.add_argument("--rerun", type=_strategies, default=None,
                   help="run these strategies again even where --out holds their runs (their code changed)")
    p.add_argument("--data", type=Path, default=None,
                   help="folder dataset (index.csv with a domain column, or one sub-folder per domain), or a "
                        "dataset in a bucket (s3://bucket/datasets/NAME, see import --to), instead of the simulator")
    p.add_argument("--out", type=Path, default=None,
                   help=f"report folder (default {DEFAULT_OUT['step-bound']}, long regime {DEFAULT_OUT['long']}); "
                        "runs it already holds for the same configuration are reused")
    p.add_argument("--strategies", type=_strategies, default=None, help=f"comma list from {','.join(STRATEGIES)}")
    p.add_argument("--train-per-domain", type=int, default=None, help="simulated train scans per domain")
    p.add_argument("--test-per-domain", type=int, default=None, help="simulated test scans per domain")
    p.add_argument("--size", type=parse_size, default=None,
                   help="scan size the simulator renders and every strategy learns at (default 64x64; 128x128 "
                        "with --device cuda)")
    p.add_argument("--steps-per-domain", type=int, default=None, help="optimiser steps per domain, every strategy")
    p.add_argument("--device", default=None, help="cpu (default) or cuda: where every strategy trains")
    p.add_argument("--memory-per-domain", type=int, default=None, help="episodic memory budget, scans per domain")
    p.add_argument("--max-domains", type=int, default=None, help="keep only the first N domains")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default 2)")
    p.add_argument("--parallel", type=int, default=None,
                   help="worker processes at once (default 1; 2 with --threads 1 uses 2 cores best, step times "
                        "then share them)")
    p.add_argument("--avalanche-seeds", type=int, default=None,
                   help="run Avalanche's rows (ewc, si, lfl, avalanche-agem, avalanche-gem) on the first N seeds only")
    p.add_argument("--update", action="store_true",
                   help="rerun only --strategies on the configuration and data of the results.json in --out and "
                        "replace their rows there (the report says which rows were rerun, when and how)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite report.md and the plots from an existing results.json in --out")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    regime = getattr(args, "regime", "step-bound")
    if args.quick:
        cfg = BenchConfig.quick_preset(**({"regime": "long", "steps_per_domain": 4 * 80} if regime == "long" else {}))
    elif regime == "long":
        cfg = BenchConfig.long_preset()
    else:
        cfg = BenchConfig(seeds=tuple(range(DEFAULT_SEEDS)))
    overrides: dict[str, Any] = {"data": args.data}
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError("--seeds must be >= 1")
        overrides["seeds"] = tuple(range(args.seeds))
    for arg, key in (("strategies", "strategies"), ("train_per_domain", "train_per_domain"),
                     ("test_per_domain", "test_per_domain"), ("steps_per_domain", "steps_per_domain"),
                     ("threads", "threads"), ("device", "device"), ("parallel", "parallel"),
                     ("avalanche_seeds", "avalanche_seeds"),
                     ("memory_per_domain", "memory_per_domain"), ("max_domains", "max_domains")):
        if getattr(args, arg) is not None:
            overrides[key] = getattr(args, arg)
    if args.size is not None:
        overrides["size"] = args.size
    elif args.device is not None and args.device.startswith("cuda"):
        overrides["size"] = (128, 128)
    return replace(cfg, **overrides)


def command_line(args: argparse.Namespace) -> str:
    parts = ["weldstream", "bench", "cl"]
    if args.quick:
        parts.append("--quick")
    if getattr(args, "regime", "step-bound") != "step-bound":
        parts += ["--regime", args.regime]
    for key in ("seeds", "data", "out", "train_per_domain", "test_per_domain", "steps_per_domain", "device",
                "memory_per_domain",
                "max_domains", "threads", "parallel", "avalanche_seeds"):
        value = getattr(args, key)
        if value is not None:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    if args.size is not None:
        parts += ["--size", "x".join(map(str, args.size))]
    if args.strategies is not None:
        parts += ["--strategies", ",".join(args.strategies)]
    if getattr(args, "rerun", None):
        parts += ["--rerun", ",".join(args.rerun)]
    return shlex.join(parts)


def render(out: Path, payload: dict[str, Any]) -> None:
    """Plots and report.md from a results payload (fresh, or read back with --report-only)."""
    plot_all(out, payload["summary"], [d["domain"] for d in payload["stream"]])
    write_markdown(out / "report.md", payload)


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = DEFAULT_OUT[getattr(args, "regime", "step-bound")]
    if getattr(args, "report_only", False):
        render(args.out, json.loads((args.out / "results.json").read_text()))
        print(f"bench cl: report rewritten in {args.out / 'report.md'}")
        return 0
    if getattr(args, "update", False):
        return update(args)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"bench cl: {exc}")
        return 2
    return _run(args.out, cfg, tuple(getattr(args, "rerun", None) or ()), command_line(args))


def update(args: argparse.Namespace) -> int:
    """Rerun some strategies on an existing report's configuration and data, and replace their rows.

    A change to one strategy then costs its own runs, not the whole benchmark: every other stored run is
    reused, as a plain run with ``--rerun`` would; the stream is rebuilt from the stored configuration and
    must describe the same data, or nothing is written.
    """
    out: Path = args.out
    path = out / "results.json"
    if not path.is_file() or not args.strategies:
        print(f"bench cl: --update needs --strategies and an existing {path}")
        return 2
    previous = json.loads(path.read_text())
    stored = BenchConfig.from_dict(previous["config"])
    unknown = [s for s in args.strategies if s not in stored.strategies]
    if unknown:
        print(f"bench cl: {unknown} are not in {path}; rerun the whole benchmark to add strategies")
        return 2
    cfg = replace(stored, **{k: getattr(args, k) for k in ("parallel", "threads") if getattr(args, k) is not None})
    return _run(out, cfg, tuple(args.strategies), command_line(args) + " --update", previous)


def _run(out: Path, cfg: BenchConfig, rerun: tuple[str, ...], command: str,
         previous: dict[str, Any] | None = None) -> int:
    """Run what ``out`` does not hold for this configuration (and ``rerun``), then write the report.

    With ``previous`` (an update) the stored report keeps its configuration and run record, and the
    update is appended to the record.
    """
    out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), _loadavg()
    print(f"bench cl: building the stream ({'folder ' + str(cfg.data) if cfg.data else 'simulator'}) ...", flush=True)
    stream = build_stream(cfg)
    if previous is not None and stream.describe() != previous["stream"]:
        print("bench cl: the rebuilt stream differs from the stored one; nothing written")
        return 2
    key = run_key(cfg, stream.describe())
    wanted = all_pairs(cfg)
    if previous is None:
        found = load_stored(out, key)
    else:  # an update keeps every other row of the report as it stands, failed runs included
        found = {(r.strategy, r.seed): r for r in map(RunResult.from_dict, previous["runs"])}
    stored = {pair: r for pair, r in found.items() if pair in wanted and pair[0] not in rerun}
    store = RunStore(out, key)
    store.forget(rerun)
    pairs = [pair for pair in wanted if pair not in stored]
    if stored:
        print(f"bench cl: reusing {len(stored)} finished runs of this configuration from {out}; "
              f"{len(pairs)} to run", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cl-") as work:
        fresh = run_all(cfg, stream, Path(work), pairs, finished=store) if pairs else []
    results = sorted([*stored.values(), *fresh], key=lambda r: (r.seed, cfg.strategies.index(r.strategy)))
    summary = summarise(results, cfg.strategies)
    record = {**_run_record(command, cfg, started, load_start), "reused": len(stored), "ran": len(fresh)}
    if previous is None:
        payload = {"config": cfg.to_dict(), "run": record, "source": stream.source, "stream": stream.describe()}
    else:
        payload = {k: previous[k] for k in ("config", "run", "source", "stream")}
        payload["run"].setdefault("updates", []).append({**record, "strategies": list(rerun)})
    payload.update(summary=summary, targets=targets(summary), runs=[r.to_dict() for r in results])
    _write(out, payload, results)
    failed = [s for s, e in summary.items() if not e["runs_ok"]]
    print(f"bench cl: report in {out / 'report.md'} ({record['wall_s'] / 60:.1f} min)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    _print_targets(payload)
    return 1 if len(failed) == len(summary) else 0


def _run_record(command: str, cfg: BenchConfig, started: float, load_start: str) -> dict[str, Any]:
    """How a run was made: the command, its wall time, the machine and its load."""
    return {"command": command, "wall_s": time.perf_counter() - started, "machine": _machine(cfg),
            "loadavg_start": load_start, "loadavg_end": _loadavg(), "finished": time.strftime("%Y-%m-%d %H:%M")}


def _write(out: Path, payload: dict[str, Any], results: list[RunResult]) -> None:
    """results.json, results.csv, the plots and report.md."""
    write_json(out / "results.json", payload)
    write_csv(out / "results.csv", results)
    render(out, payload)


def _print_targets(payload: dict[str, Any]) -> None:
    print(json.dumps({t["target"]: t["met"] for t in payload["targets"]}, indent=1))


def _loadavg() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def _machine(cfg: BenchConfig) -> str:
    return (f"{platform.machine()} {os.cpu_count()} cores ({cfg.threads} torch threads per run), "
            f"torch {version('torch')}, avalanche-lib {version('avalanche-lib')}")
