"""`weldstream label-studio push|sync`: the review queue's scans to a Label Studio project, its annotations back.

The console answers Label Studio itself (ML backend and webhook under /label-studio); these two verbs set
the project up, keep it fed, and poll finished tasks where Label Studio cannot call the console.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from weldstream.cli import _kafka_security_arguments, global_options, kafka_security
from weldstream.cli.verbs import accept_after
from weldstream.settings import add_settings, config_from_args

log = logging.getLogger(__name__)
# The console's settings that say where its database and Kafka are; its web server's are not needed here.
CONSOLE_SKIP = ("http_host", "http_port", "lease_s", "session_hours", "tls_certfile", "tls_keyfile", "behind_https",
                "upload_mb")
VERBS = {
    "push": "create or reuse the project (labelling config from weldstream's classes), connect the console as its ML "
            "backend and webhook, and import review scans with their pre-annotations up to --open-tasks open tasks",
    "sync": "send every finished annotation of the project that is not on Kafka yet (once per revision, as the "
            "webhook does), for sites where Label Studio cannot call the console",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="label_studio_command", required=True, metavar="{push,sync}")
    verbs = [sub.add_parser(name, help=text, description=text) for name, text in VERBS.items()]
    for verb in verbs:
        _options(verb)
    accept_after([], _options)


def _options(p: argparse.ArgumentParser) -> None:
    from weldstream.console.config import ConsoleConfig
    from weldstream.console.label_studio_config import LabelStudioConfig

    add_settings(p.add_argument_group("Label Studio"), LabelStudioConfig)
    add_settings(p.add_argument_group("the console's database and Kafka"), ConsoleConfig, skip=CONSOLE_SKIP)
    _kafka_security_arguments(p)
    global_options(p)


def run(args: argparse.Namespace) -> int:
    from weldstream.console.config import ConsoleConfig
    from weldstream.console.label_studio_config import LabelStudioConfig

    cfg = config_from_args(ConsoleConfig, args, kafka_security=kafka_security(args))
    ls_cfg = config_from_args(LabelStudioConfig, args)
    try:
        return asyncio.run(_loop(args.label_studio_command, cfg, ls_cfg))
    except ValueError as exc:
        print(f"weldstream label-studio {args.label_studio_command}: {exc}")
        return 2


async def _loop(verb: str, cfg, ls_cfg) -> int:
    from weldstream.console.kafka_io import open_producer
    from weldstream.console.label_studio_api import LabelStudio, LabelStudioError
    from weldstream.console.label_studio_push import push, sync
    from weldstream.console.services import open_services

    svc = open_services(cfg)
    failed = False
    try:
        if verb == "sync":
            if not cfg.kafka:
                raise ValueError("sync sends labels: give --kafka HOST:PORT")
            svc.producer = open_producer(cfg)
            await svc.producer.start()
        async with LabelStudio(ls_cfg) as ls:
            while True:
                try:
                    report = await (push if verb == "push" else sync)(svc, ls, ls_cfg)
                    print(json.dumps(report), flush=True)
                    failed = bool(report.get("failed"))
                except LabelStudioError as exc:
                    print(f"weldstream label-studio {verb}: {exc}", flush=True)
                    failed = True
                if ls_cfg.interval_s <= 0:
                    break
                await asyncio.sleep(ls_cfg.interval_s)
    finally:
        if svc.producer is not None:
            await svc.producer.stop()
        svc.registry.close()
    return 1 if failed else 0
