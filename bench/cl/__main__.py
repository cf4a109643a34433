"""``python -m weldstream.bench.cl``: the same as ``weldstream bench cl``."""

from __future__ import annotations

import argparse
import sys

from weldstream.bench.cl.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weldstream.bench.cl",
                                     description="continual-learning benchmark (weldstream bench cl)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
