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
from collections.abc import Callable
from pathlib import Path

from weldstream.cli.bench import (
    bench_adapt_arguments,
    bench_cl_arguments,
    bench_faults_arguments,
    bench_first_minutes_arguments,
    bench_gem_arguments,
    bench_review_arguments,
    bench_serve_arguments,
    bench_store_arguments,
)
from weldstream.cli.verbs import Fill as OptionFill
from weldstream.cli.verbs import accept_after
from weldstream.settings import add_settings, apply_environment, config_from_args


def _kafka_security_arguments(p: argparse.ArgumentParser) -> None:
    from weldstream.kafka_security import KafkaSecurity

    add_settings(p.add_argument_group("Kafka TLS and SASL"), KafkaSecurity)


def kafka_security(args: argparse.Namespace):
    from weldstream.kafka_security import KafkaSecurity

    return config_from_args(KafkaSecurity, args)


def _serve_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.server.config import ServerConfig

    add_settings(p, ServerConfig)
    _kafka_security_arguments(p)
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from weldstream.server.app import serve
    from weldstream.server.config import ServerConfig

    asyncio.run(serve(config_from_args(ServerConfig, args, kafka_security=kafka_security(args))))
    return 0


def _infer_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("image", type=Path, help="PNG or TIFF scan")
    p.add_argument("--target", default="127.0.0.1:8001", help="server HOST:PORT")
    p.add_argument("--out", type=Path, default=None, help="write the mask overlaid on the scan here (PNG)")
    p.add_argument("--timeout", type=float, default=30.0)
    secure = p.add_argument_group("TLS and authentication (as the server was started)")
    secure.add_argument("--tls-ca", type=Path, default=None, help="PEM CA bundle that signed the server's "
                                                                  "certificate: connect over TLS")
    secure.add_argument("--tls-cert", type=Path, default=None, help="PEM client certificate (mutual TLS)")
    secure.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    secure.add_argument("--auth-token-file", type=Path, default=None,
                        help="file holding the bearer token sent as 'authorization: Bearer <token>'")
    p.set_defaults(run=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from weldstream.client import Connection, infer_file

    connection = Connection(args.target, args.tls_ca, args.tls_cert, args.tls_key, args.auth_token_file)
    return infer_file(args.image, connection, args.out, args.timeout)


def _simulate_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.simulator import cli as simulator_cli

    simulator_cli.add_arguments(p)
    stream = p.add_argument_group("streaming to Kafka (a simulated rig and inspector)")
    stream.add_argument("--kafka", default=None, help="produce LabeledScan messages to this Kafka bootstrap")
    stream.add_argument("--rate", type=float, default=10.0, help="scans per second (0: as fast as possible)")
    stream.add_argument("--schedule", default="sequential",
                        help="sequential (--count of each domain in turn), gradual (mixes slide from one "
                             "domain to the next) or an explicit list like ut-pe100-5mhz:200,xray-film-steel-x52:50")
    stream.add_argument("--rig-id", default="sim-rig-1")
    _kafka_security_arguments(p)
    p.set_defaults(run=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from weldstream.simulator import cli as simulator_cli

    if args.kafka is None:
        return simulator_cli.run(args)
    from weldstream.dev.rig import Schedule, produce_stream
    from weldstream.simulator import domain_names

    domains = domain_names() if args.domain == "all" else [args.domain]
    schedule = Schedule.parse(args.schedule, domains, args.count)
    sent = asyncio.run(produce_stream(args.kafka, schedule, args.rate, args.size, args.seed, args.rig_id,
                                      security=kafka_security(args)))
    print(f"produced {sent} labeled scans to {args.kafka}")
    return 0


def _broker_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(run=_run_broker)


def _run_broker(args: argparse.Namespace) -> int:
    import signal

    from weldstream.dev.broker import EmbeddedBroker

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


def _learn_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.learner.config import LearnerConfig
    from weldstream.replay import StepConfig

    add_settings(p, LearnerConfig)
    add_settings(p.add_argument_group("training step"), StepConfig)
    _kafka_security_arguments(p)
    p.set_defaults(run=_run_learn)


def learner_config(args: argparse.Namespace):
    from weldstream.learner.config import LearnerConfig
    from weldstream.replay import StepConfig

    return config_from_args(LearnerConfig, args, step=config_from_args(StepConfig, args),
                            kafka_security=kafka_security(args))


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


def _demo_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.dev.demo import DemoConfig

    add_settings(p, DemoConfig)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from weldstream.dev.demo import DemoConfig, run_demo

    summary = asyncio.run(run_demo(config_from_args(DemoConfig, args)))
    return 0 if summary["client_failures"] == 0 else 1


def _bench_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    add_subcommands(p, "bench", BENCHMARKS, rest, global_options)


def _import_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.learner.importer import ImportConfig

    p.add_argument("folder", help="images and masks: an index CSV, images/ + masks/, or series folders; or a "
                                  "dataset kept with --to (s3://bucket/datasets/NAME)")
    add_settings(p, ImportConfig)
    _kafka_security_arguments(p)
    p.set_defaults(run=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from weldstream.learner.importer import ImportConfig, import_folder

    cfg = config_from_args(ImportConfig, args, kafka_security=kafka_security(args))
    report = asyncio.run(import_folder(args.folder, cfg))
    where = f"kept in {cfg.to}:" if cfg.to else f"sent to {cfg.topic} on {cfg.kafka}:"
    print(report.summary("would send" if cfg.dry_run else where))
    return 0 if report.sent else 1


def _consolidate_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.cli import consolidate

    consolidate.add_arguments(p)
    p.set_defaults(run=consolidate.run)


def _models_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.cli import models

    models.add_arguments(p)
    p.set_defaults(run=models.run)


def _label_studio_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.cli import label_studio

    label_studio.add_arguments(p)
    p.set_defaults(run=label_studio.run)


def _console_arguments(p: argparse.ArgumentParser, rest: list[str]) -> None:
    from weldstream.cli import console

    console.add_arguments(p)
    p.set_defaults(run=console.run)


Filler = Callable[[argparse.ArgumentParser, list[str]], None]

COMMANDS: dict[str, tuple[str, Filler]] = {
    "serve": ("serve defect segmentation over gRPC (native + KServe v2)", _serve_arguments),
    "infer": ("segment one scan file on a running server and print its defects", _infer_arguments),
    "simulate": ("generate labeled weld scans: to a folder (--out) or to Kafka (--kafka)", _simulate_arguments),
    "broker": ("run the embedded Kafka-protocol broker (Tansu, in memory) on loopback", _broker_arguments),
    "learn": ("learn continually from labeled scans on Kafka and publish versions", _learn_arguments),
    "import": ("check a folder of labeled scans (images + masks) and stream the good ones to Kafka",
               _import_arguments),
    "consolidate": ("an offline pass (EWC, SI, LFL, replay or joint) over everything labeled, published through "
                    "the learner's promotion guard", _consolidate_arguments),
    "models": ("the model registry: list, show, diff; pin, unpin, rollback what every server serves",
               _models_arguments),
    "console": ("the web console: inspectors label what the server doubts, operators run the model's life",
                _console_arguments),
    "label-studio": ("Label Studio as a second labelling door: push review scans with pre-labels, sync annotations "
                     "back (the console is its ML backend and webhook)", _label_studio_arguments),
    "demo": ("run the whole loop: broker, server, learner, drifting rig and a client", _demo_arguments),
    "bench": ("benchmarks that print side-by-side ratios", _bench_arguments),
}
BENCHMARKS: dict[str, tuple[str, Filler]] = {
    "serve": ("gRPC Segment latency vs in-process, batching on vs off, swap latency", bench_serve_arguments),
    "gem-step": ("GEM / A-GEM step time vs a naive step with 1, 3, 5 past domains", bench_gem_arguments),
    "cl": ("continual-learning strategies on a drifting weld stream (report + plots)", bench_cl_arguments),
    "faults": ("kill, damage and attack the running system; a report of what held", bench_faults_arguments),
    "review": ("review-first vs random labelling on a drifting stream, and the drift detector",
               bench_review_arguments),
    "store": ("how soon a published version reaches every replica: a shared directory vs an S3 bucket",
              bench_store_arguments),
    "adapt": ("new rigs served with BatchNorm statistics of their own (AdaBN), by unlabeled scans sent",
              bench_adapt_arguments),
    "first-minutes": ("a new installation at its defaults: versions served, failed calls, label-to-served "
                      "freshness", bench_first_minutes_arguments),
}


def add_subcommands(parser: argparse.ArgumentParser, dest: str, commands: dict[str, tuple[str, Filler]],
                    argv: list[str], shared: OptionFill) -> None:
    """List every subcommand, but build the options (and import the room) of the one being run only.

    So ``weldstream serve`` never imports the benchmarks' matplotlib and Avalanche, and a base install
    without the ``bench`` and ``dev`` extras runs ``serve`` and ``learn``. The ``shared`` options of
    ``parser`` are accepted after a subcommand too.
    """
    sub = parser.add_subparsers(dest=dest, required=True)
    chosen = next((i for i, word in enumerate(argv) if word in commands), None)
    for name, (help_text, fill) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is not None and argv[chosen] == name:
            accept_after([p], shared)
            fill(p, argv[chosen + 1:])


def global_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (default: sys.argv[1:]); only the command it names gets its options."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="weldstream", description=__doc__.splitlines()[0])
    global_options(parser)
    add_subcommands(parser, "command", COMMANDS, argv, global_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    apply_environment(parser, os.environ)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
