"""The continual-learning benchmark: its metrics, its pieces, and one real `--quick` run end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from weldstream.bench.cl import metrics
from weldstream.bench.cl.config import STRATEGIES, BenchConfig
from weldstream.bench.cl.report import interval_table
from weldstream.bench.cl.result import RunResult
from weldstream.bench.cl.stream import build_stream, is_test
from weldstream.bench.cl.summary import summarise, targets

# R[i][j]: after training on domain i, tested on domain j.
R = [
    [0.50, 0.10, 0.00],
    [0.30, 0.60, 0.20],
    [0.20, 0.40, 0.70],
]
BASELINE = [0.05, 0.05, 0.10]


def test_metrics_follow_their_definitions() -> None:
    assert metrics.acc(R) == pytest.approx((0.2 + 0.4 + 0.7) / 3)
    assert metrics.bwt(R) == pytest.approx(((0.2 - 0.5) + (0.4 - 0.6)) / 2)
    assert metrics.fwt(R, BASELINE) == pytest.approx(((0.10 - 0.05) + (0.20 - 0.10)) / 2)
    assert metrics.max_forgetting(R) == pytest.approx(0.3)  # domain 0: best 0.5, final 0.2
    assert metrics.old_domains(R) == pytest.approx(0.3)
    assert metrics.old_so_far(R)[1:] == pytest.approx([0.3, 0.3])
    assert metrics.mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))


def test_lfl_wrapper_computes_the_same_function_as_the_unet() -> None:
    from avalanche.models.base_model import BaseModel
    from avalanche.training.utils import get_last_fc_layer

    from weldstream.learner.lfl_model import LFLSegmenter
    from weldstream.model import ModelConfig, build_model

    unet = build_model(ModelConfig(), seed=3).eval()
    wrapped = LFLSegmenter(build_model(ModelConfig(), seed=3)).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(unet(x), wrapped(x), atol=1e-5)
        assert wrapped.get_features(x).shape == (2, 8, 64, 64)
    assert isinstance(wrapped, BaseModel)
    assert get_last_fc_layer(wrapped)[1] is wrapped.head  # the layer LFL freezes is the classifier


def test_folder_dataset_is_split_by_scan_id_and_ordered_canonically(tmp_path: Path) -> None:
    from weldstream.simulator import domain_names, write_dataset

    first, second = domain_names()[:2]
    write_dataset(tmp_path / "b", second, count=12, seed=0, size=(64, 64))
    write_dataset(tmp_path / "a", first, count=12, seed=100, size=(64, 64))
    cfg = BenchConfig(data=tmp_path, size=(64, 64), test_share=0.3)
    stream = build_stream(cfg)
    assert stream.names == [first, second]  # canonical order, not folder order
    again = build_stream(cfg)
    for d, e in zip(stream.domains, again.domains, strict=True):
        assert len(d.x_train) + len(d.x_test) == 12
        assert torch.equal(d.x_test, e.x_test) and d.x_train.shape[1:] == (1, 64, 64)
    assert is_test("scan-1", 0.3) == is_test("scan-1", 0.3)


# Only a guard against a hung run, never a speed limit: the quick run takes minutes on 2 quiet cores and
# several times that on a busy machine, and neither may fail the test.
HANG_GUARD_S = 3600

# One row of each kind: the ceiling, the floor, the baseline, the default, and an Avalanche strategy (its
# regularisers run through the same plugin path in test_consolidation's EWC pass).
RUN = ("offline-joint", "naive", "replay", "replay-gem", "avalanche-gem")


@pytest.mark.slow
def test_quick_benchmark_writes_a_real_report(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "weldstream.bench.cl", "--quick", "--out", str(out), "--strategies", ",".join(RUN)],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    summary, runs = results["summary"], results["runs"]
    n = len(results["stream"])
    assert n >= 2

    # One row per strategy in each of the two tables (intervals and paired differences; every figure):
    # numbers, or "failed" with the reason in a footnote.
    table = report.split("## Results", 1)[1].split("## Targets", 1)[0].splitlines()
    assert set(RUN) <= set(STRATEGIES) and list(summary) == list(RUN)
    for strategy in RUN:
        rows = [line for line in table if line.startswith(f"| {strategy} ")]
        assert len(rows) == 2, strategy
        if "failed" in rows[0]:
            assert f"**{strategy}** failed: " in report and summary[strategy]["errors"]
    assert "## Targets" in report and report.count("| replay-gem (default)") >= 5

    # The learner's strategies must run; Avalanche's may fail, but only with a stated reason.
    for strategy in ("offline-joint", "naive", "replay", "replay-gem"):
        assert summary[strategy]["runs_ok"] == 1, summary[strategy]["errors"]
    config = results["config"]
    ok = [r for r in runs if r["error"] is None]
    for r in ok:
        for matrix in (r["miou"], r["dice"]):
            assert len(matrix) == n and all(len(row) == n for row in matrix)
            assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
        assert len(r["baseline_miou"]) == n
        assert r["step_ms"]["total_ms"] > 0 and r["peak_rss_mb"] > 0
        assert r["step_ms"]["steps"] == sum(d["steps"] for d in r["step_ms_per_domain"]) > 0
        # One step budget for every strategy, Avalanche's included.
        assert r["step_ms"]["steps"] == config["steps_per_domain"] * n, r["strategy"]
        # After training on the first domain every model beats the randomly initialised one there (the
        # ceiling's rows are snapshots of i.i.d. training over every domain, so only its last row counts).
        first = r["miou"][-1][0] if r["strategy"] == "offline-joint" else r["miou"][0][0]
        assert first > r["baseline_miou"][0], (r["strategy"], first, r["baseline_miou"][0])
    for r in runs:
        assert r["error"] is None or r["error"].strip()

    # Rehearsal keeps the old domain better than naive fine-tuning does (last row, all domains but the last).
    replay = next(r for r in ok if r["strategy"] == "replay")
    naive = next(r for r in ok if r["strategy"] == "naive")
    assert metrics.old_domains(replay["miou"]) >= metrics.old_domains(naive["miou"])

    with (out / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(runs)
    plots = ["old_domains.png", "step_time.png", *(f"matrix_{s}.png" for s, e in summary.items() if e["runs_ok"])]
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # --update reruns one strategy on the stored configuration and data and replaces only its rows.
    rerun = subprocess.run(
        [sys.executable, "-m", "weldstream.bench.cl", "--out", str(out), "--strategies", "naive", "--update"],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
    updated = json.loads((out / "results.json").read_text())
    assert updated["config"] == config and list(updated["summary"]) == list(RUN)
    assert [u["strategies"] for u in updated["run"]["updates"]] == [["naive"]]
    before = {(r["strategy"], r["seed"]): r for r in runs}
    after = {(r["strategy"], r["seed"]): r for r in updated["runs"]}
    assert before.keys() == after.keys()
    for key, row in after.items():
        if key[0] == "naive":
            assert row["wall_s"] != before[key]["wall_s"]  # a fresh run
        else:
            assert row == before[key]
    assert "Rerun later (`--update`), same data and budget: naive" in (out / "report.md").read_text()
    refused = subprocess.run(
        [sys.executable, "-m", "weldstream.bench.cl", "--out", str(out), "--strategies", "si", "--update"],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert refused.returncode == 2 and "not in" in refused.stdout

    # Run again with the same configuration: every finished run is reused, none trains, the rows are the same.
    again = subprocess.run(
        [sys.executable, "-m", "weldstream.bench.cl", "--quick", "--out", str(out), "--strategies", "naive,replay"],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-4000:]
    assert "reusing 2 finished runs" in again.stdout and "0 to run" in again.stdout
    reused = json.loads((out / "results.json").read_text())
    assert reused["run"]["ran"] == 0 and [r["strategy"] for r in reused["runs"]] == ["naive", "replay"]
    assert reused["runs"][1] == after[("replay", 0)]


def test_avalanche_rows_can_run_on_fewer_seeds_and_the_report_says_so() -> None:
    """The full run fits its time by giving Avalanche's rows fewer seeds; the learner's rows keep them all."""
    import argparse

    from weldstream.bench.cl.cli import add_arguments, command_line, config_from_args
    from weldstream.bench.cl.report import _run_notes

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--seeds", "3", "--avalanche-seeds", "1", "--parallel", "2", "--threads", "1"])
    cfg = config_from_args(args)
    assert (cfg.parallel, cfg.threads, cfg.avalanche_seeds) == (2, 1, 1)
    assert cfg.seeds_of("replay-gem") == cfg.seeds_of("offline-joint") == (0, 1, 2)
    assert cfg.seeds_of("ewc") == cfg.seeds_of("avalanche-gem") == (0,)
    assert "--avalanche-seeds 1" in command_line(args) and "--parallel 2" in command_line(args)
    note = _run_notes(cfg.to_dict())
    assert "seeds [0] only" in note and "2 runs at once" in note
    assert _run_notes(BenchConfig().to_dict()) == ""
    assert BenchConfig(avalanche_seeds=None).seeds_of("si") == (0, 1, 2)
    with pytest.raises(ValueError, match="avalanche_seeds"):
        BenchConfig(avalanche_seeds=0)


def test_avalanche_agem_runs_when_domains_outnumber_its_memory_batch() -> None:
    """Avalanche's A-GEM splits its sample over the experiences seen; with more domains than memory scans
    per reference gradient the split was 0 and the run failed with a DataLoader error."""
    from dataclasses import replace

    from weldstream.bench.cl.avalanche_runner import agem_sample_size, run_avalanche

    cfg = replace(BenchConfig.quick_preset(), memory_batch=1, steps_per_domain=2, threads=1)
    stream = build_stream(cfg)
    assert len(stream.names) > cfg.memory_batch
    assert agem_sample_size(cfg, len(stream.names)) == len(stream.names)
    result, _ = run_avalanche("avalanche-agem", cfg, stream, seed=0)
    assert result.error is None and len(result.miou) == len(stream.names)


def _run(strategy: str, seed: int, final: list[float], first_row: float = 0.5) -> RunResult:
    """A finished two-domain run whose last row is ``final`` (domain 0 scored ``first_row`` when learned)."""
    return RunResult(strategy, seed, ["a", "b"], miou=[[first_row, 0.0], final], dice=[[0.5, 0.0], final],
                     baseline_miou=[0.0, 0.0], baseline_dice=[0.0, 0.0],
                     step_ms={"steps": 10, "total_ms": 1.0, "forward_backward_ms": 1.0, "memory_ms": 0.0,
                              "update_ms": 0.0},
                     step_ms_per_domain=[{"steps": 5, "total_ms": 1.0, "forward_backward_ms": 1.0, "memory_ms": 0.0,
                                          "update_ms": 0.0}] * 2,
                     peak_rss_mb=1.0, start_rss_mb=1.0, projected_steps=None if strategy == "ewc" else 2,
                     guarded_steps=0, plateau=[[0.4, 0.5], [0.2, 0.21]])


def test_intervals_are_students_t_and_differences_are_paired_by_seed() -> None:
    from weldstream.bench.cl.summary import best_within_interval

    mean, half = metrics.interval95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2) = 4.3027
    assert math.isnan(metrics.interval95([5.0])[1])

    # The seed moves every row alike: replay is 2 points above the default on every seed, which the rows'
    # own intervals (seed spread 20 points) hide and the paired difference shows.
    results = []
    for seed, level in enumerate((0.2, 0.4, 0.6)):
        results.append(_run("replay-gem", seed, [level, level]))
        results.append(_run("replay", seed, [level + 0.02, level + 0.02]))
        results.append(_run("naive", seed, [level - 0.1 + 0.05 * seed, level]))
        results.append(_run("offline-joint", seed, [level + 0.3, level + 0.3]))
    summary = summarise(results, ("offline-joint", "naive", "replay", "replay-gem"))
    acc_mean, acc_half = summary["replay"]["interval95"]["acc"]
    assert acc_mean == pytest.approx(42.0) and acc_half > 20
    diff, diff_half = summary["replay"]["paired_to_default"]["acc"]
    assert diff == pytest.approx(2.0) and diff_half == pytest.approx(0.0, abs=1e-9)
    assert summary["replay"]["paired_seeds"] == 3 and "paired_to_default" not in summary["replay-gem"]
    assert summary["replay"]["projected_share"] == pytest.approx(0.2)
    uncounted = summarise([_run("ewc", 0, [0.1, 0.1])], ("ewc",))  # Avalanche's rows do not count projections
    uncounted_run = uncounted["ewc"]
    assert math.isnan(uncounted_run["projected_share"])
    assert summary["replay"]["plateau_gain"]["max"] == pytest.approx(10.0)
    # Replay beats the default on every seed; the ceiling row (offline-joint) never counts as "the best row".
    assert best_within_interval(summary) == (False, ["replay"])
    verdict = next(t for t in targets(summary) if "best continual row" in t["target"])
    assert verdict["met"] is False and "replay" in verdict["note"]
    # naive's difference straddles zero: not better, so without replay the default is the best row.
    without = summarise([r for r in results if r.strategy != "replay"], ("offline-joint", "naive", "replay-gem"))
    assert best_within_interval(without) == (True, [])
    table = "\n".join(interval_table(summary))
    assert "| replay | 3 | 42.0 ± " in table and "| +2.0 ± 0.0 |" in table and "| replay-gem (default) | 3 |" in table


def test_finished_runs_are_kept_and_reused_only_for_the_same_configuration(tmp_path: Path) -> None:
    from weldstream.bench.cl.stored import RunStore, load_stored, run_key

    cfg = BenchConfig(seeds=(0, 1))
    stream = [{"domain": "a", "train": 4}]
    key = run_key(cfg, stream)
    store = RunStore(tmp_path, key)
    store(_run("replay", 0, [0.1, 0.2]))
    store(RunResult("naive", 0, ["a", "b"], error="worker process failed"))  # failed runs are not kept
    store(_run("replay-gem", 1, [0.1, 0.2]))
    # More seeds, other rows, other parallelism: the same configuration, the runs are reused.
    wider = run_key(BenchConfig(seeds=(0, 1, 2, 3, 4), parallel=2, threads=1, strategies=("replay",)), stream)
    assert sorted(load_stored(tmp_path, wider)) == [("replay", 0), ("replay-gem", 1)]
    store.forget(("replay",))
    assert sorted(load_stored(tmp_path, key)) == [("replay-gem", 1)]
    # Another budget or other data: nothing is reused, and a store for it empties the folder.
    assert load_stored(tmp_path, run_key(BenchConfig(steps_per_domain=600), stream)) == {}
    assert load_stored(tmp_path, run_key(cfg, [{"domain": "a", "train": 5}])) == {}
    RunStore(tmp_path, run_key(BenchConfig.long_preset(), stream))
    assert load_stored(tmp_path, key) == {} and not list((tmp_path / "runs").glob("result-*.json"))


def test_long_regime_trains_four_times_the_steps_on_the_rows_that_decide_the_default() -> None:
    import argparse

    from weldstream.bench.cl.cli import DEFAULT_OUT, add_arguments, command_line, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--regime", "long"])
    cfg = config_from_args(args)
    assert cfg.regime == "long" and cfg.steps_per_domain == 4 * BenchConfig().steps_per_domain
    assert cfg.strategies == ("naive", "replay", "replay-gem") and len(cfg.seeds) == 5
    assert "--regime long" in command_line(args) and DEFAULT_OUT["long"] != DEFAULT_OUT["step-bound"]
    assert len(config_from_args(parser.parse_args([])).seeds) == 5
    with pytest.raises(ValueError, match="regime"):
        BenchConfig(regime="forever")


def test_parallel_runs_start_the_slow_rows_first_and_return_in_stream_order(tmp_path: Path, monkeypatch) -> None:
    """With two workers the Avalanche rows (twice the learner's step time) start first, so no worker is left
    running one alone at the end; the results still come back seed-major in the configuration's order."""
    from weldstream.bench.cl import runner

    started: list[tuple[str, int]] = []

    def fake_worker(stream_path, config_path, strategy, seed, names, work_dir, advance):
        started.append((strategy, seed))
        return RunResult(strategy, seed, names)

    monkeypatch.setattr(runner, "_run_worker", fake_worker)
    cfg = BenchConfig(quick=True, train_per_domain=16, test_per_domain=2, size=(32, 32), max_domains=2,
                      seeds=(0, 1), strategies=("naive", "avalanche-gem", "replay"), parallel=2, threads=1,
                      avalanche_seeds=1)
    stream = build_stream(cfg)
    results = runner.run_all(cfg, stream, tmp_path)
    expected = [("naive", 0), ("avalanche-gem", 0), ("replay", 0), ("naive", 1), ("replay", 1)]
    assert [(r.strategy, r.seed) for r in results] == expected
    assert started[0] == ("avalanche-gem", 0) and sorted(started) == sorted(expected)
    serial = runner.run_all(replace(cfg, parallel=1), stream, tmp_path)  # one at a time: in order
    assert [(r.strategy, r.seed) for r in serial] == expected and started[5:] == expected
