"""`weldstream bench …`: each benchmark's options, and the runs of the two whose code is small enough to
live here (serve, gem-step); the others' options come from their own packages. Imported by the CLI
only; every benchmark's room is imported when that benchmark runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from weldstream.cli_args import parse_size


def bench_serve_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--size", type=parse_size, default=(256, 256), help="scan size")
    p.add_argument("--requests", type=int, default=200, help="timed requests per row")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients in the batching rows")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of the forward, in the server and the "
                                                          "baselines (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...: every row runs on it")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "torchscript", "onnxruntime"),
                   help="the server's --backend (auto, its default: the fastest verified on the CPU, torch on "
                        "CUDA)")
    p.add_argument("--swap-requests", type=int, default=600,
                   help="requests timed in quiet and in swapping phases each (0: no swap rows)")
    p.add_argument("--out", type=Path, default=None, help="also write table.md and results.json into this folder")
    p.set_defaults(run=run_bench_serve)


def bench_gem_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--size", type=parse_size, default=(128, 128), help="scan size")
    p.add_argument("--batch", type=int, default=8, help="scans per step")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per row")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    p.set_defaults(run=run_bench_gem)


def bench_cl_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.bench.cl import cli as cl_cli

    cl_cli.add_arguments(p)
    p.set_defaults(run=cl_cli.run)


def bench_review_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.bench.review import cli as review_cli

    review_cli.add_arguments(p)


def bench_faults_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.bench.faults import cli as faults_cli

    faults_cli.add_arguments(p)


def bench_adapt_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.bench.adapt import cli as adapt_cli

    adapt_cli.add_arguments(p)


def bench_store_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.bench import store_follow

    store_follow.add_arguments(p)


def bench_first_minutes_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.bench import first_minutes

    first_minutes.add_arguments(p)


def run_bench_serve(args: argparse.Namespace) -> int:
    from weldstream.bench.serving import ServeBench, run_serving_benchmark
    from weldstream.bench.serving_report import format_table, write_report

    result = run_serving_benchmark(ServeBench(args.size, args.requests, args.clients, args.threads, args.device,
                                              args.backend, args.swap_requests))
    print(format_table(result))
    if args.out is not None:
        write_report(result, args.out)
    return 0


def run_bench_gem(args: argparse.Namespace) -> int:
    import torch

    from weldstream.bench.gem_step import benchmark_steps, format_table

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    rows = benchmark_steps(batch=args.batch, size=args.size, repeats=args.repeats, device=device)
    print(format_table(rows))
    return 0
