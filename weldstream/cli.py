"""The `weldstream` command. Each subcommand builds its config here and hands it to its room.

The CLI is the one module allowed to reach up into the rooms (server, learner); it imports them lazily
so a command loads only the room it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from weldstream.cli_args import parse_size

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_MODEL_DIR = Path("runs/models")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve defect segmentation over gRPC (native + KServe v2)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="weight store directory")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port (-1: off)")
    p.add_argument("--max-batch-size", type=int, default=8, help="1 turns dynamic batching off")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--max-side", type=int, default=4096, help="largest accepted scan height/width")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--kafka", default=DEFAULT_KAFKA,
                   help="follow model announcements on this Kafka bootstrap address ('' to only poll the store)")
    p.add_argument("--poll-interval", type=float, default=5.0, help="seconds between weight-store polls")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from weldstream.server.app import serve
    from weldstream.server.config import ServerConfig

    cfg = ServerConfig(
        model_dir=args.model_dir, host=args.host, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms, max_queue=args.max_queue,
        max_side=args.max_side, device=args.device, threads=args.threads, kafka=args.kafka or None,
        poll_interval_s=args.poll_interval,
    )
    asyncio.run(serve(cfg))
    return 0


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="segment one scan file on a running server and print its defects")
    p.add_argument("image", type=Path, help="PNG or TIFF scan")
    p.add_argument("--target", default="127.0.0.1:8001", help="server HOST:PORT")
    p.add_argument("--out", type=Path, default=None, help="write the mask overlaid on the scan here (PNG)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(run=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from weldstream.client import infer_file

    return infer_file(args.image, args.target, args.out, args.timeout)


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    from weldstream.simulator import cli as simulator_cli

    p = sub.add_parser("simulate", help="generate labeled weld scans: to a folder (--out) or to Kafka (--kafka)")
    simulator_cli.add_arguments(p)
    stream = p.add_argument_group("streaming to Kafka (a simulated rig and inspector)")
    stream.add_argument("--kafka", default=None, help="produce LabeledScan messages to this Kafka bootstrap")
    stream.add_argument("--rate", type=float, default=10.0, help="scans per second (0: as fast as possible)")
    stream.add_argument("--schedule", default="sequential",
                        help="sequential (--count of each domain in turn), gradual (mixes slide from one "
                             "domain to the next) or an explicit list like ut-pe100-5mhz:200,xray-film-steel-x52:50")
    stream.add_argument("--rig-id", default="sim-rig-1")
    p.set_defaults(run=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from weldstream.simulator import cli as simulator_cli

    if args.kafka is None:
        return simulator_cli.run(args)
    from weldstream.rig import Schedule, produce_stream
    from weldstream.simulator import domain_names

    domains = domain_names() if args.domain == "all" else [args.domain]
    schedule = Schedule.parse(args.schedule, domains, args.count)
    sent = asyncio.run(produce_stream(args.kafka, schedule, args.rate, args.size, args.seed, args.rig_id))
    print(f"produced {sent} labeled scans to {args.kafka}")
    return 0


def _add_broker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu, in memory) on loopback")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(run=_run_broker)


def _run_broker(args: argparse.Namespace) -> int:
    import signal

    from weldstream.broker import EmbeddedBroker

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # leave wait() and stop the broker in `finally`, like Ctrl-C

    signal.signal(signal.SIGTERM, interrupt)
    broker = EmbeddedBroker(args.port, args.host).start()
    print(f"broker ready on {broker.bootstrap} (in memory; Ctrl-C stops it)", flush=True)
    try:
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def _add_learn(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("learn", help="learn continually from labeled scans on Kafka and publish versions")
    p.add_argument("--kafka", default=DEFAULT_KAFKA, help="Kafka bootstrap HOST:PORT")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--metrics-port", type=int, default=8003)
    p.add_argument("--group-id", default="weldstream-learner")
    p.add_argument("--strategy", choices=("gem", "agem", "naive"), default="gem")
    p.add_argument("--refresh", choices=("round_robin", "every_step"), default="round_robin",
                   help="GEM reference gradients: one past domain per step (default) or all every step")
    p.add_argument("--train-size", type=parse_size, default=(128, 128))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--passes", type=int, default=1, help="training steps per incoming batch")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--memory-per-domain", type=int, default=64)
    p.add_argument("--memory-batch", type=int, default=4, help="memory scans per reference gradient")
    p.add_argument("--holdout-share", type=float, default=0.15)
    p.add_argument("--publish-every-steps", type=int, default=20)
    p.add_argument("--publish-every-s", type=float, default=30.0)
    p.add_argument("--regression-tolerance", type=float, default=0.03,
                   help="mIoU drop on a domain that refuses a candidate (0.03 = 3 points) ...")
    p.add_argument("--regression-confidence", type=float, default=0.95,
                   help="... when a paired bootstrap over the held-out scans finds it in this share of resamples")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--session-timeout-ms", type=int, default=10000)
    p.set_defaults(run=_run_learn)


def learner_config(args: argparse.Namespace):
    from weldstream.learner.config import LearnerConfig
    from weldstream.replay import StepConfig

    return LearnerConfig(
        kafka=args.kafka, model_dir=args.model_dir, metrics_port=args.metrics_port, group_id=args.group_id,
        step=StepConfig(strategy=args.strategy, refresh=args.refresh, memory_batch=args.memory_batch),
        train_size=args.train_size, batch_size=args.batch_size, passes=args.passes, learning_rate=args.lr,
        memory_per_domain=args.memory_per_domain, holdout_share=args.holdout_share,
        publish_every_steps=args.publish_every_steps, publish_every_s=args.publish_every_s,
        regression_tolerance=args.regression_tolerance, regression_confidence=args.regression_confidence,
        device=args.device, threads=args.threads,
        session_timeout_ms=args.session_timeout_ms,
    )


def _run_learn(args: argparse.Namespace) -> int:
    import signal

    from weldstream.learner.loop import run

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(learner_config(args), stop)

    asyncio.run(main())
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole loop: broker, server, learner, drifting rig and a client")
    p.add_argument("--duration", type=float, default=240.0, help="seconds to run (Ctrl-C stops earlier)")
    p.add_argument("--domains", default="", help="comma-separated domains in stream order (default: all)")
    p.add_argument("--per-domain", type=int, default=200, help="labeled scans per domain before the drift")
    p.add_argument("--rate", type=float, default=8.0, help="labeled scans per second from the rig")
    p.add_argument("--size", type=parse_size, default=(64, 64), help="scan size; small so 2 CPU cores learn live")
    p.add_argument("--passes", type=int, default=2, help="learner steps per incoming batch")
    p.add_argument("--client-rate", type=float, default=4.0, help="Segment calls per second")
    p.add_argument("--kafka", default=None, help="use this Kafka cluster instead of the embedded broker")
    p.add_argument("--strategy", choices=("gem", "agem", "naive"), default="gem")
    p.add_argument("--publish-every-steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--no-live", action="store_true", help="print snapshots instead of a live view (CI logs)")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from weldstream.demo import DemoConfig, run_demo

    domains = tuple(d for d in args.domains.split(",") if d)
    cfg = DemoConfig(out=args.out, duration_s=args.duration, domains=domains, per_domain=args.per_domain,
                     rate=args.rate, size=args.size, client_rate=args.client_rate, kafka=args.kafka,
                     strategy=args.strategy, publish_every_steps=args.publish_every_steps, passes=args.passes,
                     live_view=not args.no_live)
    summary = asyncio.run(run_demo(cfg))
    return 0 if summary["client_failures"] == 0 else 1


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks that print side-by-side ratios")
    bench = p.add_subparsers(dest="bench", required=True)
    serve = bench.add_parser("serve", help="gRPC Segment latency vs in-process, batching on vs off")
    serve.add_argument("--size", type=parse_size, default=(256, 256))
    serve.add_argument("--requests", type=int, default=200)
    serve.add_argument("--clients", type=int, default=16)
    serve.add_argument("--threads", type=int, default=0)
    serve.add_argument("--swap-requests", type=int, default=600,
                       help="requests timed in quiet and in swapping phases each")
    serve.set_defaults(run=_run_bench_serve)
    gem = bench.add_parser("gem-step", help="GEM / A-GEM step time vs a naive step with 1, 3, 5 past domains")
    gem.add_argument("--size", type=parse_size, default=(128, 128))
    gem.add_argument("--batch", type=int, default=8)
    gem.add_argument("--repeats", type=int, default=5)
    gem.add_argument("--device", default="auto")
    gem.set_defaults(run=_run_bench_gem)
    from weldstream.learner.benchmark import cli as cl_cli

    cl = bench.add_parser("cl", help="continual-learning strategies on a drifting weld stream (report + plots)")
    cl_cli.add_arguments(cl)
    cl.set_defaults(run=cl_cli.run)


def _run_bench_serve(args: argparse.Namespace) -> int:
    from weldstream.server.bench import run_serving_benchmark

    print(run_serving_benchmark(args.size, args.requests, args.clients, args.threads, args.swap_requests))
    return 0


def _run_bench_gem(args: argparse.Namespace) -> int:
    import torch

    from weldstream.replay.step_benchmark import benchmark_steps, format_table

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    rows = benchmark_steps(batch=args.batch, size=args.size, repeats=args.repeats, device=device)
    print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weldstream", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("WELDSTREAM_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_serve, _add_infer, _add_simulate, _add_broker, _add_learn, _add_demo, _add_bench):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
