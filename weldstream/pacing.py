"""Producing at a chosen rate: the simulated rig, `weldstream import` and the console's dataset jobs."""

from __future__ import annotations

import asyncio
import time


async def keep_pace(started: float, count: int, rate: float) -> None:
    """Sleep until ``count`` items at ``rate`` a second since ``started`` (monotonic) are due (rate 0: no wait)."""
    if rate > 0:
        delay = started + count / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
