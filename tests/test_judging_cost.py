"""A judgement's cost: the served version is scored only on held-out scans it has not scored yet, and the
drift reference a published version carries comes from the judging pass itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weldstream.gain_curve import BINS, PROFILE_KEY
from weldstream.learner.holdout import ValidationSets
from weldstream.learner.publisher import Publisher
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import build_model
from weldstream.weight_store import WeightStore

from .conftest import learner_config, scan_with_a_defect

CPU = torch.device("cpu")


def _scan(seed: int):
    sample = scan_with_a_defect(seed)
    return sample.x, sample.y


@pytest.fixture()
def served(tmp_path):
    """A store serving version 1, a publisher comparing with it, and a candidate of other weights."""
    cfg = learner_config("unused:9092", tmp_path / "models")
    store = WeightStore(cfg.model_dir)
    store.publish(build_model(cfg.model, seed=1).state_dict(), cfg.model, parent_version=0)
    return cfg, store, Publisher(cfg, store, CPU), build_model(cfg.model, seed=2).eval()


def test_the_served_version_is_scored_only_on_held_out_scans_it_has_not_scored(served, monkeypatch) -> None:
    cfg, _, publisher, candidate = served
    validation = ValidationSets(cap=8)
    for i in range(4):
        validation.add(f"ut-{i}", "ut", *_scan(i))
    scored_by_live: list[int] = []
    original = ValidationSets.scored

    def counting(self, model, device, domain, indices=None, stride=32, with_features=False):
        if model is publisher._live_model:
            scored_by_live.append(len(indices) if indices is not None else self.size(domain))
        return original(self, model, device, domain, indices, stride, with_features)

    monkeypatch.setattr(ValidationSets, "scored", counting)
    publisher.judge(candidate, validation, seed=0)
    validation.add("ut-4", "ut", *_scan(4))  # one new held-out scan
    publisher.judge(candidate, validation, seed=0)
    x, y = _scan(2)
    validation.add("ut-2", "ut", x, torch.zeros_like(y))  # scan 2 relabelled: a new entry, scored again
    decision = publisher.judge(candidate, validation, seed=0)
    assert scored_by_live == [4, 1, 1]
    # And the kept results are exactly what scoring the whole set afresh gives.
    monkeypatch.setattr(ValidationSets, "scored", original)
    whole = validation.scan_confusions(publisher._live_model, CPU, stride=cfg.model.stride)["ut"]
    np.testing.assert_array_equal(publisher._live_scans["ut"][1], whole)
    assert decision.live_scores["ut"].samples == validation.size("ut") == 6


def test_after_a_publish_the_new_served_version_is_not_scored_again(served, monkeypatch) -> None:
    _, _, publisher, candidate = served
    validation = ValidationSets(cap=8)
    for i in range(3):
        validation.add(f"ut-{i}", "ut", *_scan(i))
    decision = publisher.judge(candidate, validation, seed=0)
    assert decision.promoted
    publisher.publish(candidate, decision, validation)
    calls = []
    original = ValidationSets.scored
    monkeypatch.setattr(ValidationSets, "scored", lambda self, model, *a, **k: (
        calls.append(model is publisher._live_model), original(self, model, *a, **k))[1])
    publisher.judge(candidate, validation, seed=0)
    assert calls == [False]  # the candidate only: the live version's results came with the publish


def test_a_published_version_carries_the_drift_reference_of_its_judging_pass(tmp_path, monkeypatch) -> None:
    cfg = learner_config("unused:9092", tmp_path / "models", regression_tolerance=1.0)
    store = WeightStore(cfg.model_dir)
    learner = ContinualLearner(cfg, CPU)
    validation = ValidationSets(cap=8)
    for domain, offset in (("ut", 0), ("xray", 100)):
        for i in range(3):
            validation.add(f"{domain}-{i}", domain, *_scan(offset + i))
    publisher = Publisher(cfg, store, CPU)

    def second_pass(*args, **kwargs):
        raise AssertionError("the held-out scans were run through the encoder a second time")

    with monkeypatch.context() as patch:
        patch.setattr(ValidationSets, "feature_reference", second_pass)
        decision = publisher.consider(learner, validation, offsets=[])
    assert decision.promoted and decision.manifest is not None
    carried = decision.manifest.metrics["feature_reference"]
    separate = validation.feature_reference(learner.published, cfg.model.stride)
    assert set(carried) == {"ut", "xray"}
    for domain in carried:
        assert carried[domain]["n"] == separate[domain]["n"] == 3
        assert carried[domain]["stages"] == separate[domain]["stages"]
        np.testing.assert_allclose(carried[domain]["mean"], separate[domain]["mean"], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(carried[domain]["std"], separate[domain]["std"], rtol=1e-3, atol=1e-5)
        # and each domain's brightness profile, which a server matches a rig with another gain curve to
        np.testing.assert_allclose(carried[domain][PROFILE_KEY], validation.gain_profiles()[domain], atol=1e-3)
        assert np.shape(carried[domain][PROFILE_KEY]) == (2, BINS)
