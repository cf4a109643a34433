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


def test_the_oracle_labels_the_scans_with_most_defect_pixels_and_is_reported_as_a_bound():
    import random

    import torch

    from weldstream.bench.review.config import ORACLE, STRATEGIES
    from weldstream.bench.review.labelling import pick

    defect_pixels = torch.tensor([3, 40, 0, 12, 40])
    assert pick(ORACLE, torch.zeros(5), 3, random.Random(0), defect_pixels) == [1, 4, 3]
    assert pick("review-first", torch.tensor([0.1, 0.9, 0.5, 0.0, 0.2]), 2, random.Random(0)) == [1, 2]

    cfg = ReviewBenchConfig(domains=("a", "b"), seeds=(0,), labels_per_domain=12, round_labels=6,
                            strategies=(*STRATEGIES, ORACLE))
    curves = [Curve("review-first", 0, "b", [0, 6, 12], [0.1, 0.2, 0.25], [0.5, 0.4]),
              Curve("random", 0, "b", [0, 6, 12], [0.1, 0.2, 0.3], [0.2, 0.2]),
              Curve(ORACLE, 0, "b", [0, 6, 12], [0.1, 0.3, 0.4], [0.1, 0.1])]
    summary = report.summarise(cfg, curves, DriftResult(100, 0, 1.2, []))
    assert summary["domains"]["b"]["oracle_labels_to_random_final"] == 6
    assert not summary["target_met"]
    assert f"The {ORACLE} (a bound, not a strategy) reaches it with 50 % of the budget" in report.table(summary)
