"""The demo path end to end: `weldstream demo --duration` runs broker, server, learner, rig and client."""

from __future__ import annotations

import json
import subprocess
import sys

FIRST, SECOND = "ut-pe100-5mhz", "ut-pe100-7mhz-tgc"


def test_demo_learns_and_keeps_the_first_domain(tmp_path):
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "weldstream.cli", "demo", "--duration", "95", "--domains", f"{FIRST},{SECOND}",
            "--per-domain", "300", "--rate", "10", "--no-live", "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["client_failures"] == 0 and summary["client_requests"] > 100
    assert summary["latest_version"] >= 2
    assert max(summary["versions_seen_by_client"]) >= 1  # the server swapped while the client was calling
    assert set(summary["final_scores"]) == {FIRST, SECOND}
    assert summary["first_domain_best_miou"] > 0.05, summary  # it learned the first domain ...
    # ... and after learning the second, the first stayed within tolerance of its best
    assert summary["first_domain_final_miou"] >= summary["first_domain_best_miou"] - 0.10, summary
    assert summary["gem_steps"] > 20
    # The loop is closed: the inspector labeled scans the server sent for review.
    assert summary["labeled_from_review"] > 0
    # The summary shows what the served version scores next to each domain's best.
    served = summary["served_miou_vs_best"]
    assert summary["served_version"] >= 1 and FIRST in served, summary
    assert all(row["served"] is None or row["served"] <= row["best"] + 1e-9 for row in served.values())
    assert (out / "logs" / "learner.log").exists()
    # The web console ran beside them, said where and how to log in, and queued the server's review scans.
    assert "web console: http://127.0.0.1:" in proc.stdout and "log in as demo" in proc.stdout
    assert sum(summary["console_review_items"].values()) > 0, summary


def test_demo_runs_the_learners_default_strategy():
    """The demo shows what a plant runs: it once ran pure GEM, which never rehearses, so later domains were weak."""
    from weldstream.dev.demo import DemoConfig
    from weldstream.replay import StepConfig

    assert DemoConfig().strategy == StepConfig().strategy == "replay-gem"
