"""Run every (strategy, seed) pair in a fresh worker process, behind one progress bar.

With ``--parallel 1`` runs are sequential, so each gets the same cores and its step times are comparable;
with more, that many workers share the cores (ACC is unaffected: every run takes the same steps, but step
times are then comparable only between runs made at the same parallelism), Avalanche's slower rows first.
A worker that dies (out of memory, a native crash) is recorded as a failed run with its exit code and last
stderr lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from weldstream.bench.cl.config import LEARNER_STRATEGIES, BenchConfig
from weldstream.bench.cl.result import RunResult
from weldstream.bench.cl.stream import Stream


def expected_steps(strategy: str, cfg: BenchConfig, stream: Stream) -> int:
    """Training steps a run will take: the same for every strategy, by construction."""
    return cfg.steps_per_domain * len(stream.domains)


def all_pairs(cfg: BenchConfig) -> list[tuple[str, int]]:
    """Every (strategy, seed) of a configuration, seed-major (so a partial run still covers every strategy)."""
    return [(strategy, seed) for seed in cfg.seeds for strategy in cfg.strategies if seed in cfg.seeds_of(strategy)]


def run_all(cfg: BenchConfig, stream: Stream, work_dir: Path, pairs: list[tuple[str, int]] | None = None,
            finished: Callable[[RunResult], None] = lambda result: None) -> list[RunResult]:
    """Every strategy for every seed, or only ``pairs``; ``finished`` sees each result as soon as it exists
    (the CLI stores it, so an interrupted benchmark resumes where it stopped).

    ``cfg.parallel`` workers run at once (default one, so each run has the cores to itself and step times
    compare; with more, ACC is unchanged, since every run counts steps, but step times share the cores).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    stream_path = work_dir / "stream.pt"
    config_path = work_dir / "config.json"
    stream.save(stream_path)
    config_path.write_text(json.dumps(cfg.to_dict()))
    pairs = all_pairs(cfg) if pairs is None else pairs
    total = sum(expected_steps(s, cfg, stream) for s, _ in pairs)
    lock = threading.Lock()
    running: list[str] = []

    with tqdm(total=total, unit="step", desc="bench cl", dynamic_ncols=True) as bar:

        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        def one(pair: tuple[str, int]) -> RunResult:
            strategy, seed = pair
            with lock:
                running.append(f"{strategy}/{seed}")
                bar.set_postfix_str(", ".join(running))
            done = [0]

            def count(n: int) -> None:
                done[0] += n
                advance(n)

            result = _run_worker(stream_path, config_path, strategy, seed, stream.names, work_dir, count)
            advance(max(0, expected_steps(strategy, cfg, stream) - done[0]))  # a failed run ends early
            with lock:
                running.remove(f"{strategy}/{seed}")
                finished(result)
            return result

        # Several at once: the slow rows start first, so the last worker is not left running one alone.
        ordered = sorted(pairs, key=slow_first) if cfg.parallel > 1 else pairs
        with ThreadPoolExecutor(max_workers=cfg.parallel) as pool:
            results = dict(zip(ordered, pool.map(one, ordered), strict=True))
        return [results[pair] for pair in pairs]


def slow_first(pair: tuple[str, int]) -> int:
    """Avalanche's rows take about twice the learner's time a step (its loop and plugins): 0 runs first."""
    return 1 if pair[0] in LEARNER_STRATEGIES else 0


def _run_worker(stream_path: Path, config_path: Path, strategy: str, seed: int, names: list[str], work_dir: Path,
                advance: Callable[[int], None]) -> RunResult:
    out = work_dir / f"result-{strategy}-{seed}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "weldstream.bench.cl.worker", str(stream_path), str(config_path),
               strategy, str(seed), str(out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("progress "):
                advance(int(line.split()[1]))
        code = proc.wait()
        stderr.seek(0)
        tail = deque(stderr, maxlen=6)
    if out.is_file():
        return RunResult.from_dict(json.loads(out.read_text()))
    reason = "killed (likely out of memory)" if code in (-9, 137) else f"exit code {code}"
    detail = " | ".join(line.strip() for line in tail if line.strip())
    return RunResult(strategy, seed, names, error=f"worker process failed: {reason}; stderr: {detail}")
