"""SIGKILL the learner mid-stream, restart it, and account for every labeled scan."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from weldstream.dev.rig import Schedule, produce_stream
from weldstream.learner.checkpoint import checkpoint_path
from weldstream.learner.ledger import read_ledger
from weldstream.simulator import generate_scan

DOMAIN = "ut-pe80-2mhz-highgain"
COUNT = 80
SEED = 3


def start_learner(kafka: str, model_dir) -> subprocess.Popen:
    args = [sys.executable, "-m", "weldstream.cli", "--log-level", "WARNING", "learn", "--kafka", kafka,
            "--model-dir", str(model_dir), "--metrics-port", "-1", "--crop-size", "64", "--batch-size", "4",
            "--memory-per-domain", "16", "--memory-batch", "2", "--publish-every-steps", "3",
            "--publish-every-s", "1", "--session-timeout-ms", "2000", "--threads", "1"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_sigkill_mid_stream_loses_no_scan(broker, tmp_path):
    model_dir = tmp_path / "models"
    expected = {generate_scan(DOMAIN, SEED * 1_000_003 + i, (32, 32)).scan_id for i in range(COUNT)}
    first = start_learner(broker.bootstrap, model_dir)
    producing = asyncio.create_task(
        produce_stream(broker.bootstrap, Schedule.parse(f"{DOMAIN}:{COUNT}"), rate=16, size=(64, 64), seed=SEED))
    try:
        await wait_until(lambda: checkpoint_path(model_dir).exists() and len(read_ledger(model_dir)) >= 12, 90,
                         "a first checkpoint")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = len({e.scan_id for e in read_ledger(model_dir)})
        assert killed_at < COUNT, "the learner was killed too late to test anything"
        second = start_learner(broker.bootstrap, model_dir)
        try:
            await producing
            await wait_until(lambda: {e.scan_id for e in read_ledger(model_dir)} >= expected, 120,
                             "every scan in the ledger")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, second.stderr.read().decode()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    ledger = read_ledger(model_dir)
    accounted = {e.scan_id for e in ledger}
    assert accounted == expected
    assert {e.use for e in ledger} <= {"train", "holdout"}
    # every offset of the topic appears: nothing was skipped between the two runs
    offsets = {(e.partition, e.offset) for e in ledger}
    assert len(offsets) == COUNT
