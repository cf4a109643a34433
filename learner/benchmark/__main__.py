"""``python -m weldstream.learner.benchmark``: the same as ``weldstream bench cl``."""

from __future__ import annotations

import argparse
import sys

from weldstream.learner.benchmark.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weldstream.learner.benchmark",
                                     description="continual-learning benchmark (weldstream bench cl)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
