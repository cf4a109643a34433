"""The demo's terminal dashboard: what the stream, the learner and the server are doing right now."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from weldstream.dev.stack import value


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


def render(state: Any, learner: dict, server: dict, elapsed_s: float, duration_s: float,
           domains: tuple[str, ...], served: dict[str, tuple[float | None, float]] | None = None) -> Group:
    steps = value(learner, "learner_steps_total")
    projected = value(learner, "learner_gem_projections_total")
    current = next((labels["domain"] for labels, v in learner.get("learner_current_domain_info", []) if v == 1), "–")

    stream = Table.grid(padding=(0, 2))
    stream.add_row("elapsed", f"{elapsed_s:5.0f} / {duration_s:.0f} s")
    stream.add_row("rig is scanning", state.rig_domain or "–")
    stream.add_row("labeled scans produced (from review)", f"{state.produced} ({state.labeled_from_review})")
    doubts = list(state.doubts)
    stream.add_row("served doubt (recent mean)", f"{sum(doubts) / len(doubts):.2f}" if doubts else "–")
    stream.add_row("consumed (train / holdout / dead-letter)",
                   " / ".join(f"{value(learner, 'learner_scans_consumed_total', use=u):.0f}"
                              for u in ("train", "holdout", "dead_letter")))
    stream.add_row("consumer lag", f"{value(learner, 'learner_consumer_lag_messages'):.0f}")
    stream.add_row("learner is on", current)
    stream.add_row("training steps left (window)",
                   f"{value(learner, 'learner_step_budget_remaining'):.0f} "
                   f"({value(learner, 'learner_window_scans'):.0f} scans)")
    stream.add_row("GEM steps (projected share)",
                   f"{steps:.0f} ({100 * projected / steps:.0f} %)" if steps else "0")
    stream.add_row("versions published / refused",
                   f"{value(learner, 'learner_versions_total', outcome='published'):.0f} / "
                   f"{value(learner, 'learner_versions_total', outcome='refused'):.0f}")
    stream.add_row("server model version", f"{value(server, 'inference_model_version'):.0f}"
                   + ("  (untrained)" if value(server, "inference_model_untrained") else ""))
    recent = list(state.latencies_ms)
    stream.add_row("client requests (failed)", f"{state.requests} ({state.failures})")
    stream.add_row("client latency p50 / p99", f"{_percentile(recent, 0.5):.1f} / {_percentile(recent, 0.99):.1f} ms")

    served = served or {}
    scores = Table(title="mIoU per domain on held-out scans", expand=False)
    scores.add_column("domain")
    scores.add_column("served version", justify="right")
    scores.add_column("best version", justify="right")
    scores.add_column("latest candidate", justify="right")
    scores.add_column("memory", justify="right")
    for domain in domains:
        now, best = served.get(domain, (None, -1.0))
        candidate = value(learner, "learner_validation_miou", -1, domain=domain)
        fill = value(learner, "learner_memory_scans", 0, domain=domain)
        scores.add_row(domain, _points(now), _points(best), _points(candidate), f"{fill:.0f}")
    return Group(Panel(stream, title="weldstream demo"), scores)


def _points(miou: float | None) -> str:
    return "–" if miou is None or miou < 0 else f"{100 * miou:.1f}"
