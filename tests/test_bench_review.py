"""`weldstream bench review` end to end at a toy size: both strategies, the drift detector, the report."""

from __future__ import annotations

import json

from weldstream.bench.review import report
from weldstream.bench.review.config import ReviewBenchConfig
from weldstream.bench.review.drift import DriftResult
from weldstream.bench.review.labelling import Curve
from weldstream.cli import main


def test_labels_to_reach_counts_whole_rounds():
    assert report.labels_to_reach([0, 6, 12, 18], [0.1, 0.2, 0.3, 0.4], 0.3) == 12
    assert report.labels_to_reach([0, 6, 12], [0.5, 0.2, 0.2], 0.3) is None  # the unlabeled start does not count


def test_summary_shares_are_against_randoms_final_miou():
    cfg = ReviewBenchConfig(domains=("a", "b"), seeds=(0,), labels_per_domain=12, round_labels=6)
    curves = [Curve("review-first", 0, "b", [0, 6, 12], [0.1, 0.3, 0.35], [0.5, 0.4]),
              Curve("random", 0, "b", [0, 6, 12], [0.1, 0.2, 0.3], [0.2, 0.2])]
    drift = DriftResult(100, 0, 1.2, [])
    summary = report.summarise(cfg, curves, drift)
    assert summary["domains"]["b"]["review_first_share_to_random_final"] == 0.5
    assert summary["target_met"] and "50 % of the budget" in report.table(summary)


def test_bench_review_quick_writes_a_report(tmp_path, capsys):
    out = tmp_path / "review"
    assert main(["bench", "review", "--quick", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["domains"]) == {"ut-pe80-2mhz-highgain"}
    assert {c["strategy"] for c in results["curves"]} == {"review-first", "random"}
    assert results["drift"]["stable_scans"] == 200 and len(results["drift"]["switches"]) == 5
    assert "review-first" in (out / "report.md").read_text() and "Drift detector" in capsys.readouterr().out
