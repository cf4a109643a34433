"""The promotion guard: a paired bootstrap tells a real drop from validation noise, and the publisher obeys it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weldstream.learner.holdout import ValidationSets, scan_hash
from weldstream.learner.publisher import FINDS_DEFECTS_MIOU, Publisher
from weldstream.learner.regression import compare
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import ModelConfig, build_model
from weldstream.scoring import confusion_matrix, mean_iou, scan_confusions, score_confusion
from weldstream.weight_store import WeightStore

from .conftest import learner_config

K = 5
CPU = torch.device("cpu")


def _scan(tp: int, fn: int, fp: int = 0, background: int = 1000) -> np.ndarray:
    """A per-scan confusion matrix with crack pixels found (tp), missed (fn) and invented (fp)."""
    cm = np.zeros((K, K), dtype=np.int64)
    cm[0, 0], cm[1, 1], cm[1, 0], cm[0, 1] = background, tp, fn, fp
    return cm


def test_mean_iou_matches_the_scalar_scoring_rule() -> None:
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 9, (50, K, K)) * (rng.random((50, K, K)) < 0.5)
    expected = [score_confusion(cm, 1).miou for cm in stack]
    np.testing.assert_allclose(mean_iou(stack), expected, rtol=0, atol=1e-12)
    assert mean_iou(np.zeros((K, K))) == 1.0  # no defect anywhere: nothing was missed


def test_per_scan_confusions_sum_to_the_whole_set() -> None:
    model = build_model(ModelConfig(), seed=3).eval()
    images = torch.randn(6, 1, 64, 64)
    masks = torch.randint(0, K, (6, 64, 64))
    per_scan = scan_confusions(model, images, masks, batch_size=4)
    assert per_scan.shape == (6, K, K)
    with torch.no_grad():
        whole = confusion_matrix(model(images).argmax(1), masks, K).numpy()
    np.testing.assert_array_equal(per_scan.sum(axis=0), whole)
    assert (per_scan.sum(axis=(1, 2)) == 64 * 64).all()


def test_the_same_results_are_no_regression() -> None:
    scans = np.stack([_scan(40, 10) for _ in range(20)])
    result = compare(scans, scans.copy())
    assert result.drop == 0 and result.confidence == 0
    assert not result.regressed(tolerance=0.03, confidence=0.95)


def test_a_drop_on_every_scan_is_a_regression() -> None:
    live = np.stack([_scan(40, 10) for _ in range(20)])
    candidate = np.stack([_scan(25, 25) for _ in range(20)])
    result = compare(live, candidate)
    assert result.drop == pytest.approx(0.8 - 0.5)
    assert result.confidence == 1.0
    assert result.regressed(tolerance=0.03, confidence=0.95)


def test_a_drop_that_hangs_on_one_scan_is_noise() -> None:
    """Twenty scans alike but one, where the live version was lucky: the drop beats the tolerance, but a
    resample leaves that scan out about a third of the time, so it is not a confident regression."""
    live = np.stack([_scan(40, 10)] * 19 + [_scan(60, 0)])
    candidate = np.stack([_scan(40, 10)] * 19 + [_scan(0, 60)])
    result = compare(live, candidate)
    assert result.drop > 0.03
    assert 0.5 < result.confidence < 0.8  # 1 - (19/20)^20 = 0.64 of resamples draw the lucky scan
    assert not result.regressed(tolerance=0.03, confidence=0.95)
    assert result.regressed(tolerance=0.03, confidence=0.0)  # the old rule would have refused


def test_results_of_different_scans_are_not_compared() -> None:
    with pytest.raises(ValueError, match="same scans"):
        compare(np.stack([_scan(1, 1)] * 3), np.stack([_scan(1, 1)] * 4))


def test_validation_revision_changes_exactly_when_the_scans_change() -> None:
    validation = ValidationSets(cap=2)
    x, y = torch.zeros(1, 8, 8), torch.zeros(8, 8, dtype=torch.uint8)
    ids = sorted((f"scan-{i}" for i in range(50)), key=scan_hash)
    validation.add(ids[10], "d", x, y)
    first = validation.revision("d")
    validation.add(ids[20], "d", x, y)
    second = validation.revision("d")
    validation.add(ids[30], "d", x, y)  # hashes above both kept scans: cut at once, the set is unchanged
    assert validation.revision("d") == second != first
    validation.add(ids[0], "d", x, y)  # the smallest hash: it replaces ids[20]
    assert validation.revision("d") != second
    restored = ValidationSets(cap=2)
    restored.load_state_dict(validation.state_dict())
    assert restored.revision("d") > 0


def _segment_everything_as(model: torch.nn.Module, cls: int) -> dict[str, torch.Tensor]:
    """The same network with its head rewired to answer `cls` for every pixel."""
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[cls] = 10.0
    return model.state_dict()


def _publisher_with_a_live_version(tmp_path, **overrides) -> tuple[Publisher, ContinualLearner, ValidationSets]:
    cfg = learner_config("unused:9092", tmp_path / "models", **{"regression_tolerance": 0.03, **overrides})
    store = WeightStore(cfg.model_dir)
    live = _segment_everything_as(build_model(cfg.model, seed=1), cls=1)  # every pixel a crack
    store.publish(live, cfg.model, parent_version=0)
    validation = ValidationSets(cap=16)
    for i in range(12):
        mask = torch.zeros(64, 64, dtype=torch.uint8)
        mask[:, : 16 + i] = 1  # cracks over a quarter to a half of the scan
        validation.add(f"scan-{i}", "ut", torch.randn(1, 64, 64), mask)
    learner = ContinualLearner(cfg, CPU)
    learner.adopt(live)  # what it judges and publishes: its averaged weights, reset to these
    return Publisher(cfg, store, CPU), learner, validation


def test_the_publisher_promotes_a_candidate_that_did_not_regress(tmp_path) -> None:
    publisher, learner, validation = _publisher_with_a_live_version(tmp_path)
    decision = publisher.consider(learner, validation, offsets=[])
    assert decision.promoted and decision.manifest is not None and decision.manifest.version == 2
    assert decision.scores["ut"].miou == pytest.approx(decision.live_scores["ut"].miou)
    assert 0.25 < decision.scores["ut"].miou < 0.5


def test_the_publisher_refuses_a_candidate_that_really_regressed(tmp_path) -> None:
    publisher, learner, validation = _publisher_with_a_live_version(tmp_path)
    _segment_everything_as(learner.published, cls=0)  # finds no defect at all
    decision = publisher.consider(learner, validation, offsets=[])
    assert not decision.promoted and decision.manifest is None
    assert decision.regressions["ut"].confidence == 1.0
    assert decision.regressions["ut"].drop == pytest.approx(decision.live_scores["ut"].miou)
    assert publisher.store.latest() == 1 and publisher.live_version == 1


def test_a_candidate_blind_to_a_domains_defects_is_refused_whatever_the_tolerance(tmp_path) -> None:
    """mIoU cannot fall below 0: without this rule an all-background model passed any loose guard."""
    publisher, learner, validation = _publisher_with_a_live_version(tmp_path, regression_tolerance=1.0)
    _segment_everything_as(learner.published, cls=0)  # finds no defect at all
    decision = publisher.consider(learner, validation, offsets=[])
    assert not decision.promoted and decision.manifest is None
    assert "ut" in decision.regressions and publisher.live_version == 1


def test_an_early_version_that_marks_noise_does_not_block_an_honest_candidate(tmp_path) -> None:
    """A served version whose defect marks are noise (mIoU under FINDS_DEFECTS_MIOU) must not refuse every
    candidate that marks no defect yet: the candidate is judged by its score (here within the tolerance)."""
    cfg = learner_config("unused:9092", tmp_path / "models", regression_tolerance=0.03)
    store = WeightStore(cfg.model_dir)
    noisy = _segment_everything_as(build_model(cfg.model, seed=1), cls=1)  # paints every pixel a crack
    store.publish(noisy, cfg.model, parent_version=0)
    validation = ValidationSets(cap=16)
    for i in range(12):
        mask = torch.zeros(64, 64, dtype=torch.uint8)
        mask[i : i + 2, i : i + 30] = 1  # a thin crack: 60 of 4096 pixels, so painting everything scores 1.5 %
        validation.add(f"scan-{i}", "ut", torch.randn(1, 64, 64), mask)
    learner = ContinualLearner(cfg, CPU)
    learner.adopt(noisy)
    _segment_everything_as(learner.published, cls=0)  # marks no defect at all
    decision = Publisher(cfg, store, CPU).consider(learner, validation, offsets=[])
    assert decision.live_scores["ut"].miou < FINDS_DEFECTS_MIOU
    assert decision.promoted and decision.manifest is not None and decision.manifest.version == 2, decision.reason


def test_validation_sets_keep_to_their_byte_budget_by_scan_hash() -> None:
    """Native-size scans can be large: the set keeps the smallest-hash scans that fit its bytes."""
    scan_bytes = 64 * 64 * 4 + 64 * 64  # float32 image + uint8 mask
    validation = ValidationSets(cap=48, max_bytes=3 * scan_bytes)
    ids = [f"scan-{i}" for i in range(10)]
    for scan_id in ids:
        validation.add(scan_id, "xray", torch.zeros(1, 64, 64), torch.zeros(64, 64, dtype=torch.uint8))
    assert validation.size("xray") == 3
    kept = sorted(ids, key=scan_hash)[:3]
    assert sorted(h for h, _, _ in validation.state_dict()["xray"]) == sorted(scan_hash(i) for i in kept)


def test_the_guard_compares_with_the_pinned_version_and_the_lineage_stays_the_learners(tmp_path) -> None:
    """While an operator pins an older version, candidates are judged against what is actually served."""
    publisher, learner, validation = _publisher_with_a_live_version(tmp_path)  # v1 finds every crack
    blind = _segment_everything_as(build_model(learner.cfg.model, seed=2), cls=0)
    publisher.store.publish(blind, learner.cfg.model, parent_version=1)  # v2: finds nothing
    publisher.store.publish(learner.published.state_dict(), learner.cfg.model, parent_version=2)  # v3 = v1's weights
    publisher.parent_version = 3
    assert publisher.follow_served() and publisher.live_version == 3
    learner.published.load_state_dict(blind)
    assert not publisher.consider(learner, validation, offsets=[]).promoted  # blind against v3: refused

    publisher.store.pin(2)  # the operator holds the servers on the blind v2
    assert publisher.follow_served() and publisher.live_version == 2
    decision = publisher.consider(learner, validation, offsets=[])
    assert decision.promoted and decision.compared_with == 2
    assert decision.manifest.version == 4 and decision.manifest.parent_version == 3
    assert publisher.live_version == 2 and publisher.parent_version == 4  # the servers stay on the pin
    publisher.store.unpin()
    assert publisher.follow_served() and publisher.live_version == 4


def test_a_candidate_judged_while_a_consolidation_lands_is_withdrawn_not_served_over_it(tmp_path) -> None:
    """The candidate was compared with v1; a consolidation published meanwhile (v2) was never compared with
    it, so the candidate must not take v3 and displace v2: it is withdrawn and judged again next round."""
    publisher, learner, validation = _publisher_with_a_live_version(tmp_path)
    learner.label_times = [1.0, 2.0]
    judge = publisher.judge

    def judge_while_a_consolidation_lands(*args, **kwargs):
        decision = judge(*args, **kwargs)
        publisher.store.publish(build_model(learner.cfg.model, seed=9).state_dict(), learner.cfg.model,
                                parent_version=1, strategy="consolidate-ewc")
        return decision

    publisher.judge = judge_while_a_consolidation_lands
    decision = publisher.consider(learner, validation, offsets=[], version=2)
    assert not decision.promoted and decision.manifest is None and "version 2" in decision.reason
    assert publisher.store.versions() == [1, 2] and publisher.store.manifest(2).strategy == "consolidate-ewc"
    assert publisher.parent_version == 1 and learner.label_times == [1.0, 2.0]  # nothing of it was published
    publisher.judge = judge
    assert publisher.consider(learner, validation, offsets=[], version=3).manifest.version == 3


def test_a_version_number_taken_by_another_writer_is_refused_not_overwritten(tmp_path, monkeypatch) -> None:
    """Asked for a number, the store never takes another: whether the number was taken before the write
    or by a writer that renamed its version into place a moment earlier."""
    import os

    from weldstream import weight_store

    store = WeightStore(tmp_path / "models")
    first = build_model(ModelConfig(), seed=1).state_dict()
    store.publish(first, ModelConfig(), parent_version=0)
    second = build_model(ModelConfig(), seed=2).state_dict()
    with pytest.raises(FileExistsError):
        store.publish(second, ModelConfig(), parent_version=0, version=1)
    rename = os.rename

    def another_writer_lands_first(source, target):
        monkeypatch.setattr(weight_store.os, "rename", rename)
        store.publish(first, ModelConfig(), parent_version=1, strategy="consolidate-ewc")  # takes v2
        rename(source, target)

    monkeypatch.setattr(weight_store.os, "rename", another_writer_lands_first)
    with pytest.raises(FileExistsError):
        store.publish(second, ModelConfig(), parent_version=1, version=2)
    assert store.versions() == [1, 2] and store.manifest(2).strategy == "consolidate-ewc"
    assert not [p for p in store.versions_dir.iterdir() if p.name.startswith(".tmp-")]  # no staging left


class _Prepared:
    """Held-out results prepared per model, told apart by their weights (the publisher scores its own copy
    of the served model), on one domain whose scans never change."""

    def __init__(self, results: dict[torch.nn.Module, np.ndarray]) -> None:
        self.results = {self._key(model): scans for model, scans in results.items()}
        self._entries = [object() for _ in range(len(next(iter(self.results.values()))))]

    @staticmethod
    def _key(model: torch.nn.Module) -> float:
        return float(next(iter(model.state_dict().values())).flatten()[0])

    def domains(self) -> list[str]:
        return ["ut"]

    def revision(self, domain: str) -> int:
        return 1

    def entries(self, domain: str) -> list[object]:
        return list(self._entries)

    def scan_confusions(self, model, device, domains=None) -> dict[str, np.ndarray]:
        return {"ut": self.results[self._key(model)]}

    def scored(self, model, device, domain, indices=None, stride=32, with_features=False):
        scans = self.results[self._key(model)]
        return (scans if indices is None else scans[indices]), None


@pytest.mark.parametrize("baseline", ["served", "best"])
def test_with_the_best_baseline_a_domain_cannot_slide_in_steps_each_within_the_tolerance(tmp_path, baseline) -> None:
    cfg = learner_config("unused:9092", tmp_path / "models", regression_tolerance=0.03, regression_baseline=baseline)
    store = WeightStore(cfg.model_dir)
    v1, a, b = (build_model(cfg.model, seed=seed) for seed in (1, 2, 3))
    store.publish(v1.state_dict(), cfg.model, parent_version=0)
    validation = _Prepared({v1: np.stack([_scan(40, 10)] * 20), a: np.stack([_scan(39, 11)] * 20),
                            b: np.stack([_scan(38, 12)] * 20)})
    scores = [mean_iou(validation.scan_confusions(m, CPU)["ut"].sum(0)) for m in (v1, a, b)]
    assert scores[0] - scores[1] < 0.03 and scores[1] - scores[2] < 0.03 < scores[0] - scores[2]
    publisher = Publisher(cfg, store, CPU)
    first = publisher.judge(a, validation, seed=0)
    assert first.promoted  # within 3 points of v1
    publisher.publish(a, first, validation)
    second = publisher.judge(b, validation, seed=0)  # within 3 points of a, more than 3 below v1
    if baseline == "served":
        assert second.promoted
    else:
        assert not second.promoted and "best served" in second.reason
        assert second.regressions["ut"].drop > 0.03 and second.compared_with == 2
    # Another trainer's version (here a's weights again) becomes what is served: the bar restarts from it.
    store.publish(a.state_dict(), cfg.model, parent_version=2, strategy="consolidate-ewc")
    assert publisher.follow_served() and publisher.judge(b, validation, seed=0).promoted


def test_the_regression_baseline_is_served_or_best(tmp_path) -> None:
    with pytest.raises(ValueError, match="regression_baseline"):
        learner_config("unused:9092", tmp_path, regression_baseline="oldest")
