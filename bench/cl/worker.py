"""One (strategy, seed) run in its own process: a crash or a memory blow-up stays inside it, and the
process's peak resident memory is that strategy's alone.

    python -m weldstream.bench.cl.worker STREAM.pt CONFIG.json STRATEGY SEED RESULT.json

Progress goes to stdout as ``progress <steps>`` lines for the parent's bar; the result, or the
failure with its traceback summary, goes to RESULT.json.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from weldstream.bench.cl.config import LEARNER_STRATEGIES, BenchConfig
from weldstream.bench.cl.result import RunResult
from weldstream.bench.cl.stream import Stream
from weldstream.bench.cl.timing import PeakRSS, StepLog

PROGRESS_EVERY = 4  # steps between progress lines


class _Progress:
    def __init__(self) -> None:
        self.pending = 0

    def __call__(self, n: int) -> None:
        self.pending += n
        if self.pending >= PROGRESS_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            print(f"progress {self.pending}", flush=True)
            self.pending = 0


def run_one(stream_path: Path, cfg: BenchConfig, strategy: str, seed: int) -> RunResult:
    """Load the shared stream, train one strategy with one seed, and time it; never raises."""
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    stream = Stream.load(stream_path)
    progress = _Progress()
    rss = PeakRSS()
    try:
        with rss:
            t0 = time.perf_counter()
            result, log = _train(strategy, cfg, stream, seed, progress)
            result.train_s = time.perf_counter() - t0 - result.eval_s
    except Exception as exc:  # reported in the table, never dropped
        result = RunResult(strategy, seed, stream.names, error=_summary(exc))
        log = StepLog()
    progress.flush()
    result.step_ms = log.summary()
    result.step_ms_per_domain = log.per_domain(len(stream.domains))
    result.peak_rss_mb, result.start_rss_mb = rss.peak_mb, rss.start_mb
    result.wall_s = time.perf_counter() - started
    return result


def _train(strategy: str, cfg: BenchConfig, stream: Stream, seed: int, progress: _Progress) -> tuple:
    if strategy in LEARNER_STRATEGIES:
        from weldstream.bench.cl.harness import run_weldstream

        return run_weldstream(strategy, cfg, stream, seed, progress)
    warnings.filterwarnings("ignore", module=r"avalanche(\.|$)")
    from weldstream.bench.cl.avalanche_runner import run_avalanche

    return run_avalanche(strategy, cfg, stream, seed, progress)


def _summary(exc: BaseException) -> str:
    """The exception and the innermost frames, short enough for a table cell's footnote."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__}: {exc} (at {where})"


def main(argv: list[str]) -> int:
    stream_path, config_path, strategy, seed, out = argv
    cfg = BenchConfig.from_dict(json.loads(Path(config_path).read_text()))
    result = run_one(Path(stream_path), cfg, strategy, int(seed))
    Path(out).write_text(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
