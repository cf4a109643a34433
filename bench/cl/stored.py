"""Runs kept from earlier invocations, so a benchmark of hours resumes where it stopped and more seeds or
rows can be added to a report without rerunning the ones it has.

A run is reused only if it was made on the same configuration (``BenchConfig.reuse_key``: everything but
which rows and seeds run and how many at once) and the same data (the stream's description). Sources, in
order: the ``results.json`` of the report folder, then ``runs/`` beside it, where every run is written
the moment it finishes. Failed runs are never reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from weldstream.bench.cl.config import BenchConfig
from weldstream.bench.cl.result import RunResult

RUNS = "runs"
KEY = "key.json"


def run_key(cfg: BenchConfig, stream_description: list[dict[str, Any]]) -> dict[str, Any]:
    return {"config": cfg.reuse_key(), "stream": stream_description}


def load_stored(out: Path, key: dict[str, Any]) -> dict[tuple[str, int], RunResult]:
    """Successful runs of the same configuration and data found in ``out``, by (strategy, seed)."""
    found: dict[tuple[str, int], RunResult] = {}
    results = out / "results.json"
    if results.is_file():
        payload = json.loads(results.read_text())
        stored = run_key(BenchConfig.from_dict(payload["config"]), payload["stream"])
        if _same(stored, key):
            for data in payload["runs"]:
                _keep(found, RunResult.from_dict(data))
    runs = out / RUNS
    if (runs / KEY).is_file() and _same(json.loads((runs / KEY).read_text()), key):
        for path in sorted(runs.glob("result-*.json")):
            _keep(found, RunResult.from_dict(json.loads(path.read_text())))
    return found


class RunStore:
    """Writes each finished run to ``out/runs/`` at once; a folder of another configuration is emptied."""

    def __init__(self, out: Path, key: dict[str, Any]) -> None:
        self.folder = out / RUNS
        self.folder.mkdir(parents=True, exist_ok=True)
        key_path = self.folder / KEY
        if key_path.is_file() and not _same(json.loads(key_path.read_text()), key):
            for path in self.folder.glob("result-*.json"):
                path.unlink()
        key_path.write_text(json.dumps(key, indent=1) + "\n")

    def __call__(self, result: RunResult) -> None:
        if result.error is None:
            path = self.folder / f"result-{result.strategy}-{result.seed}.json"
            path.write_text(json.dumps(result.to_dict()) + "\n")

    def forget(self, strategies: tuple[str, ...]) -> None:
        """Drop the stored runs of strategies that are to be run again (their code changed)."""
        for strategy in strategies:
            for path in self.folder.glob(f"result-{strategy}-*.json"):
                if path.stem.rsplit("-", 1)[0] == f"result-{strategy}":
                    path.unlink()


def _keep(found: dict[tuple[str, int], RunResult], result: RunResult) -> None:
    if result.error is None and result.miou:
        found[(result.strategy, result.seed)] = result


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal after a JSON round trip (tuples and lists compare alike)."""
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))
