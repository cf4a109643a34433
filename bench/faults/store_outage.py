"""The weight store's S3 server goes away under two serving replicas: no call fails, both say the store is down
(inference_store_up 0) and back (1), and both follow the first version published after it returns.

The servers poll the bucket (no Kafka), so the seconds from the store's return to the new version being served
include the servers' backoff (1 s, 2 s, 4 s … 30 s): the price of a long outage, stated.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from weldstream.bench.faults.processes import FaultTimeout, scrape, start_server, stop, tail, wait_until
from weldstream.bench.faults.report import FaultResult
from weldstream.bench.replica_calls import ReplicaCalls
from weldstream.dev.broker import free_port
from weldstream.dev.seaweed import SeaweedS3
from weldstream.model import ModelConfig, build_model
from weldstream.object_store import ObjectWeightStore

BUCKET = "weldstream-faults"
REPLICAS = 2
FOLLOW_S = 120.0  # a version loaded, checked and warmed on a busy two-core machine; plus the last backoff


def publish(store: ObjectWeightStore, seed: int) -> int:
    config = ModelConfig()
    return store.publish(build_model(config, seed=seed).state_dict(), config,
                         parent_version=store.latest() or 0).version


def store_up(metrics_ports: list[int]) -> list[float]:
    return [scrape(port)[("inference_store_up", ())] for port in metrics_ports]


async def store_outage(work: Path, outage_s: float) -> FaultResult:
    result = FaultResult(
        fault=f"store outage {outage_s:g} s",
        done=f"{REPLICAS} servers, each with its own cache, follow an S3 bucket (SeaweedFS; polled every 0.3 s, no "
             f"Kafka) while a client per server calls Segment without pause; the S3 server is stopped for "
             f"{outage_s:g} s with nothing published, started again, and a new version published",
        expected="0 failed calls; both servers report inference_store_up 0 during the outage and 1 after, and "
                 "serve the version published after it",
    )
    seaweed = SeaweedS3(work / "s3")
    url = f"s3://{BUCKET}/models"
    ports = [free_port() for _ in range(REPLICAS)]
    metrics_ports = [free_port() for _ in range(REPLICAS)]
    logs = [work / f"server-{i}.log" for i in range(REPLICAS)]
    servers = []
    with seaweed.exported():  # the publisher here and the servers started below reach this S3 server
        try:
            await asyncio.to_thread(seaweed.start)
            await asyncio.to_thread(seaweed.create_bucket, BUCKET)
            publisher = ObjectWeightStore(url, cache_dir=work / "publisher")
            first = await asyncio.to_thread(publish, publisher, 1)
            servers = [start_server(work / f"server-{i}", port, metrics, log, "--store", url, "--backend", "torch")
                       for i, (port, metrics, log) in enumerate(zip(ports, metrics_ports, logs, strict=True))]
            async with ReplicaCalls(ports, pause_s=0.01) as calls:
                await wait_until(lambda: calls.reached(first) is not None, FOLLOW_S, f"both servers to serve v{first}")
                went_down = time.monotonic()
                await asyncio.to_thread(seaweed.stop)
                noticed_s = await wait_until(lambda: store_up(metrics_ports) == [0, 0], outage_s,
                                             "both servers to report the store down")
                await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - went_down)))
                during = store_up(metrics_ports)
                await asyncio.to_thread(seaweed.start)
                back = time.monotonic()
                second = await asyncio.to_thread(publish, publisher, 2)
                await wait_until(lambda: calls.reached(second) is not None, FOLLOW_S,
                                 f"both servers to serve v{second}, published after the outage")
                follow_s = calls.reached(second) - back
                after = store_up(metrics_ports)
            errors = [scrape(port)[("inference_store_errors_total", ())] for port in metrics_ports]
        except (FaultTimeout, OSError, KeyError) as exc:
            result.measured = f"{exc}; server log: {tail(logs[0], 300)!r}; weed log: {seaweed.log_tail(5)!r}"
            return result
        finally:
            codes = [stop(server) for server in servers]
            seaweed.close()
    result.figures = {"requests": calls.answered, "failed": len(calls.failures), "first_failures": calls.failures[:5],
                      "outage_s": round(back - went_down, 1), "seconds_to_notice": round(noticed_s, 1),
                      "store_up_during": during, "store_up_after": after, "store_errors": errors,
                      "version_after": second, "seconds_from_return_to_both_serving": round(follow_s, 1),
                      "server_exit_codes": codes}
    result.passed = not calls.failures and during == [0, 0] and after == [1, 1] and codes == [0] * REPLICAS
    result.measured = (f"{calls.answered} calls, {len(calls.failures)} failed; store down {back - went_down:.1f} s, "
                       f"noticed by both in {noticed_s:.1f} s; inference_store_up {during} during, {after} after; "
                       f"v{second} served by both {follow_s:.1f} s after the store returned")
    return result
