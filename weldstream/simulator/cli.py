"""`weldstream simulate`: write labelled scan datasets to a folder, one domain or all of them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from weldstream.cli_args import parse_size
from weldstream.simulator.dataset import PIXEL_COLUMNS, read_index, write_dataset
from weldstream.simulator.domains import DOMAINS, domain_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulate options; --out stays optional so a streaming sink can be added beside it."""
    parser.add_argument("--out", type=Path, default=None,
                        help="dataset folder (with --domain all: one sub-folder per domain)")
    parser.add_argument("--domain", default="all", choices=[*domain_names(), "all"], metavar="NAME",
                        help=f"one of {', '.join(domain_names())}, or 'all' (default)")
    parser.add_argument("--count", type=int, default=100, help="scans per domain (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scan; scan i uses seed + i")
    parser.add_argument("--size", type=parse_size, default=(128, 128), help="HxW in pixels (default 128x128)")


def run(args: argparse.Namespace) -> int:
    """Write the dataset(s) and print one summary line per domain."""
    if args.out is None:
        raise SystemExit("weldstream simulate: --out DIR is required (where to write the scans)")
    if args.count < 0 or args.seed < 0:
        raise SystemExit("weldstream simulate: --count and --seed must be >= 0")
    names = domain_names() if args.domain == "all" else [args.domain]
    for name in names:
        out = Path(args.out) / name if args.domain == "all" else Path(args.out)
        index = write_dataset(out, name, args.count, seed=args.seed, size=args.size)
        rows = read_index(index)
        total = sum(row["height"] * row["width"] for row in rows) or 1
        flawed = sum(row[column] for row in rows for column in PIXEL_COLUMNS[1:])
        clean = sum(all(row[column] == 0 for column in PIXEL_COLUMNS[1:]) for row in rows)
        domain = DOMAINS[name]
        size = f"{args.size[0]}x{args.size[1]}"
        print(f"{name}: {len(rows)} scans ({domain.modality}, {domain.dtype}, {size}), "
              f"{clean} defect-free, {100 * flawed / total:.2f} % defect pixels -> {index}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weldstream.simulator.cli", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
