"""Fill the disk under the learner's model directory (a size-limited tmpfs), then free it: the learner
commits nothing it could not checkpoint, keeps running, and catches up once there is space again."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from weldstream.bench.faults.learner_kills import produce
from weldstream.bench.faults.processes import FaultTimeout, is_live, scrape, start_learner, stop, tail, wait_until
from weldstream.bench.faults.report import FaultResult
from weldstream.dev.broker import EmbeddedBroker, free_port
from weldstream.learner.ledger import read_ledger
from weldstream.topics import LABELED_SCANS, ensure_topics

TMPFS_MB = 1024
GROUP = "weldstream-learner"


def mount_tmpfs(path: Path, size_mb: int) -> str | None:
    """None once mounted, else why it could not be (mounting needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "needs root to mount a size-limited tmpfs"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount failed: {done.stderr.strip()}"


def fill(path: Path) -> int:
    """Write zeros until the filesystem is full; returns the bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
                written += len(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return written


async def committed_total(bootstrap: str) -> int:
    """The learner group's committed offsets, summed over the labeled topic's partitions (read by a
    consumer of that group that never joins it, so the learner keeps its partitions)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = reader.partitions_for_topic(LABELED_SCANS) or set()
        offsets = [await reader.committed(TopicPartition(LABELED_SCANS, p)) for p in sorted(partitions)]
    finally:
        await reader.stop()
    return sum(o for o in offsets if o is not None)


async def disk_full(work: Path, scans: int, rate: float, seed: int) -> FaultResult:
    result = FaultResult(
        fault="disk full",
        done=f"learner's model directory on a {TMPFS_MB} MiB tmpfs; {scans} scans learned; the tmpfs filled to "
             f"the last byte; {scans} more scans streamed; then the filler removed",
        expected="while full: checkpoint failures counted, committed offsets do not move, the learner keeps "
                 "running; after: every scan in the ledger, offsets committed to the end, clean exit",
    )
    disk = work / "disk"
    if (why := mount_tmpfs(disk, TMPFS_MB)) is not None:
        result.measured = result.skipped = f"not run: {why}"
        return result
    model_dir, log, filler = disk / "models", work / "learner.log", disk / "filler"
    metrics_port = free_port()
    try:
        with EmbeddedBroker(free_port()) as broker:
            await ensure_topics(broker.bootstrap)
            learner = start_learner(broker.bootstrap, model_dir, log, "--publish-every-s", "3",
                                    "--publish-every-steps", "1000", metrics_port=metrics_port)
            try:
                first = set(await produce(broker.bootstrap, scans, rate, {}, seed))
                await wait_until(lambda: first <= {e.scan_id for e in read_ledger(model_dir)}, 180,
                                 "the first scans in the ledger")
                await wait_until(lambda: is_live(metrics_port), 60, "the learner's /healthz")
                await asyncio.sleep(4.0)  # the commit that follows the checkpoint
                before = await committed_total(broker.bootstrap)
                filled = await asyncio.to_thread(fill, filler)
                second = set(await produce(broker.bootstrap, scans, rate, {}, seed + 1))
                await wait_until(lambda: _failures(metrics_port) >= 2, 60, "checkpoint failures while full")
                during = await committed_total(broker.bootstrap)
                alive_while_full = learner.poll() is None and is_live(metrics_port)
                filler.unlink()
                await wait_until(lambda: second <= {e.scan_id for e in read_ledger(model_dir)}, 180,
                                 "the scans sent while full in the ledger")
                after = await _committed_reaches(broker.bootstrap, 2 * scans, 60)
                failures = _failures(metrics_port)
            except FaultTimeout as exc:
                result.measured = f"{exc}; learner alive {learner.poll() is None}; log: {tail(log, 300)!r}"
                return result
            finally:
                code = stop(learner)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    result.figures = {"filled_bytes": filled, "committed_before": before, "committed_while_full": during,
                      "committed_after": after, "records": 2 * scans, "checkpoint_failures": failures,
                      "alive_while_full": alive_while_full, "exit_code": code}
    result.passed = during == before and alive_while_full and after == 2 * scans and code == 0
    result.measured = (f"{failures:.0f} checkpoint failures while full; committed {before} before, {during} while "
                       f"full, {after}/{2 * scans} after; alive while full: {'yes' if alive_while_full else 'no'}; "
                       f"exit {code}")
    return result


async def _committed_reaches(bootstrap: str, target: int, timeout_s: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (total := await committed_total(bootstrap)) < target and loop.time() < deadline:
        await asyncio.sleep(0.5)
    return total


def _failures(metrics_port: int) -> float:
    try:
        return scrape(metrics_port).get(("learner_checkpoint_failures_total", ()), 0.0)
    except OSError:
        return 0.0
