"""`weldstream bench adapt`: the new rigs' transforms, and the quick run end to end against a real server."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from weldstream.bench.adapt import transforms as T
from weldstream.simulator import generate_scan


def ramp_image(rows: int = 40, cols: int = 30) -> np.ndarray:
    return np.linspace(0.1, 0.9, rows * cols).reshape(rows, cols)


def test_export_uses_the_bits_asked_for_and_clips_to_the_range():
    unit = np.array([[-0.5, 0.0, 0.5, 1.0, 1.5]])
    assert T.export(unit, "uint16").tolist() == [[0, 0, 32768, 65535, 65535]]
    assert T.export(unit, "uint8").tolist() == [[0, 0, 128, 255, 255]]
    assert T.export(unit, "uint16", bits=10).tolist() == [[0, 0, 512, 1023, 1023]]
    assert T.export(unit, "float32").dtype == np.float32
    with pytest.raises(ValueError):
        T.export(unit, "uint8", bits=12)


def test_flip_moves_the_mask_with_the_image():
    image = ramp_image()
    mask = np.zeros(image.shape, np.uint8)
    mask[3:6, 2:4] = 2
    flipped, flipped_mask = T.flip(image, mask)
    assert np.array_equal(flipped[:, ::-1], image) and np.array_equal(flipped_mask[:, ::-1], mask)
    assert np.array_equal(flipped[flipped_mask == 2], image[:, ::-1][mask[:, ::-1] == 2])


def test_gamma_below_one_lifts_weak_signals_and_keeps_the_ends():
    unit = np.array([0.0, 0.04, 0.25, 1.0])
    lifted = T.gamma(unit, 0.6)
    assert lifted[0] == 0 and lifted[-1] == 1 and (lifted[1:3] > unit[1:3]).all()
    assert np.all(np.diff(lifted) > 0)  # order kept


def test_noise_has_the_asked_sigma_and_follows_the_seed():
    unit = np.full((200, 200), 0.5)
    a = T.add_noise(unit, 0.02, np.random.default_rng(1))
    b = T.add_noise(unit, 0.02, np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert abs(float((a - unit).std()) - 0.02) < 0.001 and abs(float((a - unit).mean())) < 0.001


def test_blur_keeps_the_mean_and_spreads_a_point():
    unit = np.zeros((21, 21))
    unit[10, 10] = 1.0
    blurred = T.blur(unit, 1.5)
    assert abs(blurred.sum() - 1.0) < 1e-9 and 0 < blurred[10, 10] < 0.1 and blurred[10, 12] > 0
    assert np.allclose(blurred, blurred.T) and np.allclose(T.blur(np.full((9, 9), 0.3), 2.0), 0.3)
    assert np.array_equal(T.blur(unit, 0), unit)


def test_depth_ramp_raises_the_gain_row_by_row():
    unit = np.full((11, 4), 0.1)
    ramped = T.depth_ramp(unit, 20.0)
    assert np.allclose(ramped[0], 0.1) and np.allclose(ramped[-1], 1.0)  # +20 dB = x10 at the bottom
    assert np.all(np.diff(ramped[:, 0]) > 0) and np.allclose(ramped[:, 0], ramped[:, 3])


def test_dose_gradient_runs_across_the_columns():
    unit = np.full((5, 11), 0.5)
    graded = T.dose_gradient(unit, 0.5, 1.5)
    assert np.allclose(graded[:, 0], 0.25) and np.allclose(graded[:, -1], 0.75) and np.allclose(graded[:, 5], 0.5)
    assert np.allclose(graded[0], graded[4])


def test_halved_contrast_halves_each_flaws_difference_from_its_background_and_nothing_else():
    unit = np.full((40, 40), 0.2)
    mask = np.zeros(unit.shape, np.uint8)
    mask[18:22, 18:22] = 1
    unit[mask > 0] = 0.8
    halved = T.halve_defect_contrast(unit, mask)
    assert np.allclose(halved[mask > 0], 0.5) and np.array_equal(halved[mask == 0], unit[mask == 0])
    assert np.array_equal(T.halve_defect_contrast(unit, np.zeros_like(mask)), unit)


def test_every_rig_keeps_the_mask_aligned_and_is_the_same_for_the_same_seed():
    scan = generate_scan("ut-pe100-5mhz", 11, (64, 64))
    for rig in T.rigs_of("ut-pe100-5mhz") + T.rigs_of("xray-dda-steel-x70-inverted"):
        source = scan if rig.source == "ut-pe100-5mhz" else generate_scan(rig.source, 11, (64, 64))
        image, mask = rig.scan(source.image, source.mask, 11)
        again, _ = rig.scan(source.image, source.mask, 11)
        assert image.shape == mask.shape == source.mask.shape and np.array_equal(image, again), rig.name
        assert sorted(np.unique(mask)) == sorted(np.unique(source.mask)), rig.name
        if "flip" in rig.name:
            assert np.array_equal(mask, source.mask[:, ::-1])
        else:
            assert np.array_equal(mask, source.mask), rig.name
        assert image.dtype in (np.uint8, np.uint16, np.float32), rig.name


def test_a_count_scores_each_test_scan_after_that_many_scans_and_at_most_a_quarter_more():
    from weldstream.bench.adapt.runner import group_size

    assert [group_size(n, 8) for n in (1, 7, 8, 32, 128)] == [7, 1, 2, 8, 32]


def test_targets_name_the_rows_that_miss_them():
    from weldstream.bench.adapt.report import format_table, targets

    def row(name, kind, m0, m32, oracle, old=0.6, clones=(8, "adapt")):
        return {"name": name, "kind": kind, "miou": {"0": m0, "8": m0 + 0.9 * (m32 - m0), "32": m32},
                "oracle": oracle, "in_process_at": {"count": 32, "miou": oracle - 0.01},
                "old_rig": {"miou": old, "served_with": {"rig": 0, "scored": 4}},
                "served_with": {n: {"scored": 4, "rig": 4, "rig_scans": [n_, n_ + 1], "drift": 5.0}
                                for n, n_ in (("0", 0), ("8", 8), ("32", 32))},
                "clone_scans": {"8": [list(clones)], "32": [[32, "adapt"]]}}

    result = {"config": {"counts": [0, 8, 32], "steps": 1, "crop_size": 32, "train_scans": 1, "size": [64, 64],
                         "test_scans": 4, "min_scans": 8},
              "sources": [{"source": "ut-pe100-5mhz", "validation_miou": 0.6, "served_source_miou": 0.6,
                           "served_matches_in_process": 1.0,
                           "rows": [row("old rig", "old", 0.6, 0.6, 0.59),
                                    row("flip+gamma+noise+16-bit", "transform", 0.45, 0.55, 0.56),
                                    row("blur", "transform", 0.3, 0.33, 0.4, old=0.58)]}]}
    result["targets"] = checked = targets(result)
    misses = [miss for target in checked for miss in target["misses"]]
    assert len(checked) == 6 and [target["holds"] for target in checked] == [False, False, True, True, False, True]
    assert misses == ["ut-pe100-5mhz / blur: 33.0 vs oracle 40.0", "ut-pe100-5mhz / blur: +3.0 points",
                      "beside ut-pe100-5mhz / blur: -2.0 points"]
    table = format_table(result)
    flip = "| flip+gamma+noise+16-bit | transform | 45.0 | 54.0 | 55.0 | 56.0 | 55.0 | 75% → 92% | +10.0 | adapt |"
    assert flip in table
    assert "**missed** (ut-pe100-5mhz / blur: +3.0 points)" in table and "Started over" not in table
    result["sources"][0]["rows"][2]["clone_scans"]["32"] = [[20, "adapt"]]
    assert "Started over (a drift event or a changed rig) before or while being scored: blur at 32." in \
        format_table(result)


def test_bench_adapt_quick_serves_every_row_and_leaves_the_old_rig_alone(tmp_path, capsys):
    import json

    from weldstream.bench.adapt.config import AdaptBench
    from weldstream.bench.adapt.runner import group_size, rows_for
    from weldstream.cli import main

    out = tmp_path / "adapt"
    assert main(["--log-level", "WARNING", "bench", "adapt", "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    cfg = AdaptBench.quick_preset()
    [source] = result["sources"]
    assert [row["name"] for row in source["rows"]] == [row.name for row in rows_for(cfg, source["source"])]
    assert [row["kind"] for row in source["rows"]].count("stress") == 5
    # the server's masks are the in-process masks of the same version
    assert source["served_matches_in_process"] == 1.0
    base = source["served_source_miou"]
    for row in source["rows"]:
        assert set(row["miou"]) == {"0", "8"} and 0 <= row["oracle"] <= 1, row["name"]
        assert row["served_with"]["0"]["rig"] == 0  # --no-rig-normalisation serves the version's statistics
        scored = row["served_with"]["8"]
        assert scored["scored"] == cfg.test_scans
        if scored["rig"]:  # a rig's own statistics come from the 8 scans it sent, or from a few test scans more
            low, high = scored["rig_scans"]
            assert 8 <= low <= high <= 8 + group_size(8) - 1, row["name"]
        if row["plan"] != "shared-id":  # (two rigs behind one id may start over)
            assert all(scans in (0, 8) for scans, _ in row["clone_scans"]["8"]), row["name"]
        assert row["old_rig"]["served_with"]["rig"] == 0
        assert abs(row["old_rig"]["miou"] - base) <= 0.005, row["name"]
    old = source["rows"][0]
    assert old["kind"] == "old" and old["served_with"]["8"]["rig"] == 0 and old["miou"]["8"] == old["miou"]["0"]
    flip = next(row for row in source["rows"] if row["name"] == "flip+gamma+noise+16-bit")
    assert flip["served_with"]["8"]["rig"] == cfg.test_scans  # a shifted rig is served with its own statistics
    assert len(result["targets"]) == 5 and result["environment"]["command"].startswith("weldstream bench adapt")
    table = (out / "table.md").read_text()
    assert table.strip() == capsys.readouterr().out.strip()
    assert all(f"| {row['name']} |" in table for row in source["rows"])
    # the rows after labels: every transform rig, the version itself and each label count
    assert [row["name"] for row in source["labels"]] == list(cfg.transforms)
    for row in source["labels"]:
        assert set(row["by_labels"]) == {"0", *map(str, cfg.labels)}
        version = row["by_labels"]["0"]
        assert abs(version["old_rig"] - base) <= 0.005  # in-process, the version's own scans score as served
        for scores in row["by_labels"].values():
            assert all(0 <= scores[key] <= 1 for key in ("version_statistics", "rig_statistics", "old_rig"))
            assert scores["decision"] in ("keep", "adapt") and scores["distance"] > 0
            own = scores["decision"] == "adapt"
            assert scores["served"] == scores["rig_statistics" if own else "version_statistics"]
    assert "after the rig's first labels" in table


def test_learning_a_rigs_labels_starts_from_the_version_every_time():
    """Each label count continues from the version's learner as it was: the same k twice gives the same
    weights (a count that stepped the version's optimiser or memory would change the next one's start)."""
    import torch

    from weldstream.bench.adapt import labels
    from weldstream.bench.adapt.config import AdaptBench
    from weldstream.bench.adapt.models import train_and_publish
    from weldstream.bench.adapt.runner import RowRun, rows_for

    cfg = AdaptBench.quick_preset()
    source = cfg.sources[0]
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_and_publish(source, Path(tmp), 8, 8, cfg.size, 2, cfg.crop_size)
    state = trained.learner.state_dict()
    before = {k: v.clone() for k, v in trained.learner.optimizer.state_dict()["state"][0].items()}
    run = RowRun(next(row for row in rows_for(cfg, source) if row.kind == "transform"), cfg)
    first = labels.learn_labels(state, trained.learner, run, 4, 6).state_dict()
    second = labels.learn_labels(state, trained.learner, run, 4, 6).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], trained.model.state_dict()[k]) for k in first)  # it did learn
    after = trained.learner.optimizer.state_dict()["state"][0]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_labels_only_run_replaces_the_label_rows_of_the_kept_report_and_nothing_else():
    from weldstream.bench.adapt.cli import with_label_rows
    from weldstream.bench.adapt.report import format_table

    kept = {"config": {"counts": [0], "size": [8, 8], "labels": [4], "label_steps": 8, "steps": 1, "crop_size": 8,
                       "train_scans": 1, "test_scans": 2, "min_scans": 8},
            "sources": [{"source": "ut-pe100-5mhz", "rows": [], "served_source_miou": 0.66, "labels": [{"old": True}]},
                        {"source": "xray-dda-steel-x70-inverted", "rows": [], "labels": [{"untouched": True}]}]}
    scores = {"version_statistics": 0.5, "rig_statistics": 0.6, "old_rig": 0.7, "served": 0.5, "decision": "keep",
              "distance": 1.2}
    fresh = {"config": {"labels": [16], "label_steps": 96},
             "environment": {"command": "weldstream bench adapt --labels-only", "wall_s": 9.0},
             "sources": [{"source": "ut-pe100-5mhz", "rows": [],
                          "labels": [{"name": "blur", "by_labels": {"0": scores, "16": scores}}]}]}
    merged = with_label_rows(kept, fresh)
    ut, x70 = merged["sources"]
    assert ut["served_source_miou"] == 0.66 and ut["labels"][0]["name"] == "blur"
    assert x70["labels"] == [{"untouched": True}]
    assert merged["config"]["labels"] == [16] and merged["config"]["label_steps"] == 96
    x70["labels"] = []
    merged["targets"] = []
    assert "measured apart: `weldstream bench adapt --labels-only`" in format_table(merged)
    assert "| blur | 50.0 / 60.0 | 50.0 / 60.0 | +10.0, +10.0 | 50.0 (keep at 1.2), 50.0 (keep at 1.2) |" \
        in format_table(merged)


def test_the_table_says_which_statistics_and_which_curve_served_a_row():
    from weldstream.bench.adapt.report import _served

    def summary(rig: int, scans: list[int] | None, gain: int, db: float | None) -> dict:
        return {"scored": 32, "rig": rig, "rig_scans": scans, "gain": gain, "gain_db": db}

    assert _served(summary(0, None, 0, None)) == "version"
    assert _served(summary(30, [8, 8], 0, None)) == "rig 8 (30/32)"
    assert _served(summary(0, None, 32, 25.7)) == "version, gain 25.7 dB"
    assert _served(summary(32, [8, 11], 32, 24.9)) == "rig 8-11, gain 24.9 dB"  # own statistics on corrected scans
