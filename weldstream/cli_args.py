"""Argument types shared by every command line parser."""

from __future__ import annotations

import argparse

MIN_SIDE = 32


def parse_size(text: str) -> tuple[int, int]:
    """'128x256' -> (128, 256) as (rows, cols); a single number means a square."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 128x128, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"size must be HxW with both sides >= {MIN_SIDE}, got {text!r}")
    return parts[0], parts[1]
