"""`weldstream console`: the web console; `weldstream console add-user NAME --role R` gives someone an account."""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from pathlib import Path

from weldstream.cli import _kafka_security_arguments, global_options, kafka_security
from weldstream.cli.verbs import accept_after
from weldstream.settings import add_settings, config_from_args

ROLE_HELP = "viewer (looks), inspector (labels and rejects), operator (uploads, pins, consolidates)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    _group_options(p)
    sub = p.add_subparsers(dest="console_command", required=False, metavar="{add-user}")
    add_user = sub.add_parser("add-user", help="create an account (or reset its password and role); prints its "
                                               "API token once, as the last word", description=ROLE_HELP)
    add_user.add_argument("name")
    add_user.add_argument("--role", required=True, choices=("viewer", "inspector", "operator"), help=ROLE_HELP)
    add_user.add_argument("--password-file", type=Path, default=None,
                          help="read the password from this file ('' : ask, or make one up when not at a terminal)")
    accept_after([add_user], _verb_options)


def _group_options(p: argparse.ArgumentParser) -> None:
    from weldstream.console.config import ConsoleConfig, ServerConnection

    add_settings(p, ConsoleConfig)
    add_settings(p.add_argument_group("the gRPC server (TLS and token as for `weldstream infer`)"), ServerConnection)
    _kafka_security_arguments(p)


def _verb_options(p: argparse.ArgumentParser) -> None:
    _group_options(p)
    global_options(p)


def console_config(args: argparse.Namespace):
    from weldstream.console.config import ConsoleConfig, ServerConnection

    return config_from_args(ConsoleConfig, args, connection=config_from_args(ServerConnection, args),
                            kafka_security=kafka_security(args))


def run(args: argparse.Namespace) -> int:
    cfg = console_config(args)
    if args.console_command == "add-user":
        return _add_user(args, cfg)
    from weldstream.console.app import run_console

    run_console(cfg)
    return 0


def _add_user(args: argparse.Namespace, cfg) -> int:
    from weldstream.console.services import open_services

    made_up = ""
    if args.password_file is not None:
        password = args.password_file.read_text(encoding="utf-8").strip()
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
    else:
        password = made_up = secrets.token_urlsafe(12)
    svc = open_services(cfg)
    try:
        token = svc.accounts.add(args.name, args.role, password)
        svc.record_action("add-user", "cli", f"{args.name} as {args.role}")
    except ValueError as exc:
        print(f"weldstream console add-user: {exc}")
        return 2
    finally:
        svc.registry.close()
    print(f"account {args.name}: {args.role}" + (f", password {made_up}" if made_up else ""))
    print(f"API token (shown once; send it as 'Authorization: Bearer <token>'): {token}")
    return 0
