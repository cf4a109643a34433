"""`weldstream consolidate`: run an offline consolidation job, stoppable with Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading

from weldstream.cli import _kafka_security_arguments, kafka_security
from weldstream.learner.consolidate_config import ConsolidateConfig
from weldstream.learner.consolidation import PROGRESS_FILE, Outcome, Stopped, consolidate
from weldstream.settings import add_settings, config_from_args

STOPPED = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_settings(p, ConsolidateConfig)
    _kafka_security_arguments(p)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ConsolidateConfig, args, kafka_security=kafka_security(args))
    stop = threading.Event()

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await consolidate(cfg, stop)

    try:
        outcome = asyncio.run(main())
    except Stopped:
        print(f"stopped; progress is saved in {cfg.model_dir / PROGRESS_FILE}: run the same command to resume")
        return STOPPED
    print(summary(outcome, cfg))
    return 0 if outcome.decision.promoted else 1


def summary(outcome: Outcome, cfg: ConsolidateConfig) -> str:
    d = outcome.decision
    resumed = f", resumed after {outcome.resumed_units}" if outcome.resumed_units else ""
    head = (f"consolidate {cfg.strategy}: {outcome.units} units{resumed}, {outcome.steps} steps, "
            f"{outcome.train_seconds:.1f} s of training, started from version {outcome.started_from}")
    verdict = (f"published version {d.manifest.version} (parent {d.manifest.parent_version})" if d.manifest
               else f"refused: {d.reason}")
    lines = [head, f"{verdict}; compared with served version {d.compared_with}",
             f"  {'domain':<28} {'mIoU served':>12} {'mIoU new':>10} {'change':>8}"]
    for domain, score in sorted(d.scores.items()):
        before = d.live_scores.get(domain)
        change = f"{score.miou - before.miou:+.4f}" if before else "-"
        lines.append(f"  {domain:<28} {before.miou if before else float('nan'):>12.4f} {score.miou:>10.4f} {change:>8}")
    return "\n".join(lines)
