"""SIGKILL the learner at random moments while a rig streams (hostile records mixed in), then account
for every record in the ledger: trained, held out or dead-lettered, none lost, duplicates counted."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from weldstream.bench.faults.hostile import hostile_records
from weldstream.bench.faults.processes import FaultTimeout, is_live, start_learner, stop, tail, wait_until
from weldstream.bench.faults.report import FaultResult
from weldstream.dev.broker import EmbeddedBroker, free_port
from weldstream.dev.rig import labeled_scan
from weldstream.learner.ledger import read_ledger
from weldstream.limits import record_bytes
from weldstream.simulator import generate_scan
from weldstream.topics import DEAD_LETTER, LABELED_SCANS, ensure_topics

DOMAINS = ("ut-pe100-5mhz", "xray-film-steel-x52")


async def produce(bootstrap: str, scans: int, rate: float, hostile: dict[str, bytes], seed: int) -> list[str]:
    """Labeled scans at `rate` per second, hostile records spread among them; returns every key sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                max_request_size=record_bytes())
    await producer.start()
    keys: list[str] = []
    every = max(1, scans // (len(hostile) + 1))
    bad = iter(hostile.items())
    try:
        for i in range(scans):
            sample = generate_scan(DOMAINS[i * len(DOMAINS) // scans], seed * 100_003 + i, (64, 64))
            await producer.send_and_wait(LABELED_SCANS, labeled_scan(sample, "fault-rig").SerializeToString(),
                                         key=sample.scan_id.encode())
            keys.append(sample.scan_id)
            if i % every == every - 1 and (item := next(bad, None)) is not None:
                await producer.send_and_wait(LABELED_SCANS, item[1], key=item[0].encode())
                keys.append(item[0])
            await asyncio.sleep(1 / rate)
        for key, value in bad:
            await producer.send_and_wait(LABELED_SCANS, value, key=key.encode())
            keys.append(key)
    finally:
        await producer.stop()
    return keys


async def dead_letters(bootstrap: str, wanted: set[str], timeout_s: float = 30.0) -> dict[str, dict[str, bytes]]:
    consumer = AIOKafkaConsumer(DEAD_LETTER, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_bytes=record_bytes(),
                                max_partition_fetch_bytes=record_bytes())
    await consumer.start()
    got: dict[str, dict[str, bytes]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while not wanted <= set(got) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    got[(record.key or b"").decode()] = dict(record.headers)
    finally:
        await consumer.stop()
    return got


async def learner_kills(work: Path, kills: int, scans: int, rate: float, big_bytes: int, seed: int) -> FaultResult:
    result = FaultResult(
        fault=f"learner SIGKILL x{kills}",
        done=f"{scans} labeled scans + hostile records streamed at {rate:g}/s; learner SIGKILLed {kills} times at "
             "random moments and restarted; then run to the end of the stream and stopped with SIGTERM",
        expected="every record in the ledger as train, holdout or dead_letter; 0 lost; hostile ones in the "
                 "dead-letter topic with a reason; clean exit",
    )
    rng = random.Random(seed)
    model_dir, log = work / "models", work / "learner.log"
    hostile = hostile_records(big_bytes)
    with EmbeddedBroker(free_port()) as broker:
        await ensure_topics(broker.bootstrap)
        streaming = asyncio.create_task(produce(broker.bootstrap, scans, rate, hostile, seed))
        metrics_port = free_port()
        learner = start_learner(broker.bootstrap, model_dir, log, metrics_port=metrics_port)
        try:
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(2.0, 6.0))
                os.kill(learner.pid, signal.SIGKILL)
                learner.wait(10)
                learner = start_learner(broker.bootstrap, model_dir, log, metrics_port=metrics_port)
            keys = await streaming
            wanted = set(keys)
            await wait_until(lambda: wanted <= {e.scan_id for e in read_ledger(model_dir)}, 240,
                             "every record in the ledger")
            await wait_until(lambda: is_live(metrics_port), 120, "the last learner to be up (/healthz)")
        except FaultTimeout as exc:
            result.measured = f"{exc}; learner log: {tail(log, 300)!r}"
            return result
        finally:
            streaming.cancel()
            code = stop(learner)
        letters = await dead_letters(broker.bootstrap, set(hostile))
    ledger = read_ledger(model_dir)
    produced = set(keys)
    accounted = {e.scan_id for e in ledger} & produced
    uses = {}
    for entry in ledger:
        uses.setdefault(entry.scan_id, entry.use)
    offsets = [(e.partition, e.offset) for e in ledger]
    duplicates = len(offsets) - len(set(offsets))
    hostile_ok = all(uses.get(k) == "dead_letter" and letters.get(k, {}).get("reason") for k in hostile)
    clean = {k for k in produced if k not in hostile and uses.get(k) in ("train", "holdout")}
    figures = {"produced": len(produced), "accounted": len(accounted), "lost": len(produced - accounted),
               "duplicates": duplicates, "kills": kills,
               "dead_lettered": sum(u == "dead_letter" for u in uses.values()),
               "hostile": len(hostile), "hostile_dead_lettered_with_reason": sum(
                   bool(letters.get(k, {}).get("reason")) for k in hostile),
               "trained_or_held_out": len(clean), "final_exit_code": code,
               "reasons": {k: letters.get(k, {}).get("reason", b"").decode()[:120] for k in hostile}}
    result.figures = figures
    result.passed = not figures["lost"] and hostile_ok and code == 0 and len(clean) == len(produced) - len(hostile)
    result.measured = (f"produced {figures['produced']}, accounted {figures['accounted']}, lost {figures['lost']}, "
                       f"duplicates {duplicates}; hostile dead-lettered with a reason "
                       f"{figures['hostile_dead_lettered_with_reason']}/{len(hostile)}; final exit {code}")
    return result
