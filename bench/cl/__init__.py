"""The continual-learning benchmark: the learner's strategies against Avalanche's, at one step budget.

One stream, one budget: ``cli.run`` builds the stream (``stream``), runs every (strategy, seed) in its
own worker process (``runner``, ``worker``) through either the learner itself (``harness``) or
Avalanche (``avalanche_runner``), then summarises (``metrics``, ``summary``) and
writes the report (``report``, ``plots``). Nothing heavy is imported here, so a worker process pays
only for what its strategy needs.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``weldstream bench cl``; see ``cli.add_arguments``."""
    from weldstream.bench.cl.cli import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write the report; see ``cli.run``."""
    from weldstream.bench.cl.cli import run as run_cli

    return run_cli(args)


__all__ = ["add_arguments", "run"]
