"""Damaged versions in the weight store: each one refused and counted, the last good one kept serving."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import torch

from weldstream.bench.faults.processes import FaultTimeout, scrape, served_version, start_server, stop, tail, wait_until
from weldstream.bench.faults.report import FaultResult
from weldstream.codec import array_to_tensor
from weldstream.dev.broker import free_port
from weldstream.model import ModelConfig, build_model
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import MANIFEST_FILE, WEIGHTS_FILE, WeightStore


def _publish(store: WeightStore, seed: int, nan: bool = False, staging: WeightStore | None = None,
             damage: Callable[[WeightStore, int], None] | None = None) -> int:
    """A new version; with `staging`, written and damaged there first and then renamed into the store,
    so the server never sees it undamaged."""
    state = build_model(ModelConfig(), seed=seed).state_dict()
    if nan:
        state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    version = (store.latest() or 0) + 1
    target = staging or store
    target.publish(state, ModelConfig(), parent_version=version - 1, version=version)
    if damage is not None:
        damage(target, version)
    if staging is not None:
        os.rename(staging.path_of(version), store.path_of(version))
    return version


def _truncate(store: WeightStore, version: int) -> None:
    weights = store.path_of(version) / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _flip_byte(store: WeightStore, version: int) -> None:
    weights = store.path_of(version) / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def _other_model(store: WeightStore, version: int) -> None:
    """The manifest of another architecture over these weights (checksum still right)."""
    path = store.path_of(version) / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["model_config"]["encoder"] = "resnet18"
    path.write_text(json.dumps(manifest))


def _missing(store: WeightStore, version: int) -> None:
    (store.path_of(version) / WEIGHTS_FILE).unlink()


DAMAGES: dict[str, tuple[Callable[[WeightStore, int], None] | None, bool, str]] = {
    # name -> (damage after publishing, publish NaN weights, the swap counter it raises)
    "truncated weights": (_truncate, False, "failed"),
    "flipped byte": (_flip_byte, False, "failed"),
    "NaN weights": (None, True, "failed"),
    "manifest of another model": (_other_model, False, "failed"),
    "missing weights file": (_missing, False, "retry"),
}


def _swaps(metrics_port: int) -> dict[str, float]:
    samples = scrape(metrics_port)
    return {dict(labels)["result"]: value for (name, labels), value in samples.items()
            if name == "inference_model_swaps_total"}


async def damaged_versions(work: Path) -> FaultResult:
    result = FaultResult(
        fault="damaged versions",
        done=f"published {len(DAMAGES)} damaged versions ({', '.join(DAMAGES)}) after a good one, "
             "then a good one; server polling the store every 0.3 s",
        expected="each refused and counted (failed, or retry for a file not there yet); the last good version "
                 "serves throughout; the next good version is swapped in",
    )
    store, staging = WeightStore(work / "models"), WeightStore(work / "staging")
    good = _publish(store, seed=1)
    port, metrics_port, log = free_port(), free_port(), work / "server.log"
    server = start_server(store.root, port, metrics_port, log)
    rows: dict[str, dict[str, object]] = {}
    request = segmenter_pb2.SegmentRequest(scan_id="s", image=tensor_pb2.Image(
        tensor=array_to_tensor(np.zeros((64, 64), np.uint8))))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)

            async def served() -> int:
                return (await stub.Segment(request, wait_for_ready=True, timeout=120)).model_version

            assert await served() == good
            for name, (damage, nan, counter) in DAMAGES.items():
                before = _swaps(metrics_port)
                version = _publish(store, seed=version_seed(name), nan=nan, staging=staging, damage=damage)
                await wait_until(lambda c=counter, b=before: _swaps(metrics_port)[c] > b[c], 60,
                                 f"the server to refuse the {name}")
                rows[name] = {"version": version, "counted": counter, "serving": await served()}
            final = _publish(store, seed=99)
            await wait_until(lambda: served_version(metrics_port) == final, 60, "the next good version")
            rows["next good version"] = {"version": final, "serving": await served()}
            behind = scrape(metrics_port)[("inference_model_versions_behind", ())]
    except (FaultTimeout, grpc.aio.AioRpcError) as exc:
        result.measured = f"{exc}; server log: {tail(log, 300)!r}"
        return result
    finally:
        code = stop(server)
    kept = all(row["serving"] == good for name, row in rows.items() if name in DAMAGES)
    result.passed = kept and rows["next good version"]["serving"] == final and behind == 0 and code == 0
    result.figures = {"versions": rows, "versions_behind_at_end": behind, "server_exit_code": code}
    result.measured = (f"{len(DAMAGES)}/{len(DAMAGES)} refused and counted; v{good} served throughout: "
                       f"{'yes' if kept else 'no'}; then v{final} swapped in "
                       f"({'yes' if rows['next good version']['serving'] == final else 'no'})")
    return result


def version_seed(name: str) -> int:
    return 10 + list(DAMAGES).index(name)
