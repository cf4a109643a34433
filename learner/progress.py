"""A long job's progress: a tqdm bar on stderr where tqdm is installed, else a log line every tenth of the way."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

try:
    from tqdm import tqdm
except ImportError:  # the base install: progress goes to the log
    tqdm = None

log = logging.getLogger(__name__)


@contextmanager
def progress_bar(enabled: bool, title: str) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr (the ``consolidate`` extra), or a log line every tenth of the way without it."""
    bar: Any = None
    logged = [0]

    def update(done: int, total: int) -> None:
        nonlocal bar
        if not enabled:
            return
        if tqdm is None:
            if done * 10 // total > logged[0]:
                logged[0] = done * 10 // total
                log.info("%s: %d/%d steps", title, done, total)
            return
        if bar is None:
            bar = tqdm(total=total, initial=done - 1, desc=title, unit="step", dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
