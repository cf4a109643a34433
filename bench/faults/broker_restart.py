"""Restart the embedded broker (it forgets every topic, offset and group) under a running learner and
server: both reconnect, topics come back, learning resumes, no old version is published again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from weldstream.bench.faults.learner_kills import produce
from weldstream.bench.faults.processes import (
    FaultTimeout,
    served_version,
    start_learner,
    start_server,
    stop,
    tail,
    wait_until,
)
from weldstream.bench.faults.report import FaultResult
from weldstream.dev.broker import EmbeddedBroker, free_port
from weldstream.learner.ledger import read_ledger
from weldstream.topics import ensure_topics
from weldstream.weight_store import WeightStore

SETTLE_S = 5.0  # after topics are re-created, before the rig streams again


async def broker_restart(work: Path, scans: int, rate: float, seed: int) -> FaultResult:
    result = FaultResult(
        fault="broker restart",
        done=f"{scans} scans streamed, a version published and served; the broker stopped and started empty on "
             f"the same port; {scans} more scans streamed",
        expected="learner and server keep running and reconnect; topics re-created; the new scans are learned "
                 "and a newer version is published and served; no version number published twice",
    )
    model_dir, store = work / "models", WeightStore(work / "models")
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    learner_log, server_log = work / "learner.log", work / "server.log"
    broker = EmbeddedBroker(port).start()
    learner = start_learner(broker.bootstrap, model_dir, learner_log)
    server = start_server(model_dir, grpc_port, metrics_port, server_log, "--kafka", broker.bootstrap,
                          "--poll-interval", "5")
    try:
        first = set(await produce(broker.bootstrap, scans, rate, {}, seed))
        await wait_until(lambda: first <= {e.scan_id for e in read_ledger(model_dir)}, 180, "the first scans")
        await wait_until(lambda: (store.latest() or 0) >= 1, 180, "a first version")
        before = store.latest()
        await wait_until(lambda: served_version(metrics_port) >= before, 60, "the server to serve it")
        broker.stop()
        await asyncio.sleep(2.0)
        broker = EmbeddedBroker(port).start()
        await ensure_topics(broker.bootstrap)
        await asyncio.sleep(SETTLE_S)
        second = set(await produce(broker.bootstrap, scans, rate, {}, seed + 1))
        await wait_until(lambda: second <= {e.scan_id for e in read_ledger(model_dir)}, 180,
                         "the scans sent after the restart in the ledger")
        await wait_until(lambda: (store.latest() or 0) > before, 180, "a version learned after the restart")
        after = store.latest()
        await wait_until(lambda: served_version(metrics_port) >= after, 60, "the server to serve it")
        alive = learner.poll() is None and server.poll() is None
    except FaultTimeout as exc:
        result.measured = (f"{exc}; learner alive {learner.poll() is None}, server alive {server.poll() is None}; "
                           f"learner log: {tail(learner_log, 300)!r}")
        return result
    finally:
        learner_code, server_code = stop(learner), stop(server)
        broker.stop()
    versions = store.versions()
    parents = [store.manifest(v).parent_version for v in versions]
    lineage = all(p == v - 1 for p, v in zip(parents, versions, strict=True))
    result.figures = {"versions_before": before, "versions_after": after, "versions": versions,
                      "parents": parents, "learner_exit_code": learner_code, "server_exit_code": server_code}
    result.passed = alive and lineage and learner_code == 0 and server_code == 0
    result.measured = (f"learner and server alive through the restart: {'yes' if alive else 'no'}; versions "
                       f"1..{before} before, up to {after} after, each version's parent the one before: "
                       f"{'yes' if lineage else 'no'}; exit codes {learner_code}, {server_code}")
    return result
