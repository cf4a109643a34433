"""The polarity head: which scans the model inverts, how the learner teaches it, and old weights loading."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from weldstream.features import encoder_summary
from weldstream.learner.config import LearnerConfig
from weldstream.learner.holdout import ValidationSets
from weldstream.learner.publisher import Publisher
from weldstream.learner.records import LabeledSample
from weldstream.learner.trainer import ContinualLearner
from weldstream.model import ModelConfig, build_model
from weldstream.polarity import POLARITY_KEY, DomainPolarity, PolarityHead, defect_contrast, describe, load_weights
from weldstream.preprocess import training_pair
from weldstream.replay import StepConfig
from weldstream.simulator import generate_scan
from weldstream.weight_store import WeightStore

from .conftest import learner_config

SIZE = (64, 64)
BRIGHT, DARK = "ut-pe100-5mhz", "xray-film-steel-x52"  # the simulator's voids: bright echoes, dark on a print


def pairs(domain: str, count: int, base: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [training_pair(s.image, s.mask) for s in (generate_scan(domain, base + i, SIZE) for i in range(count))]


def test_an_untrained_head_keeps_every_scan_so_the_model_is_its_network_bit_for_bit() -> None:
    with_head, without = build_model(ModelConfig()).eval(), build_model(ModelConfig(polarity=False)).eval()
    x = torch.randn(3, 1, 64, 96)
    assert not with_head.inverts(x).any()
    assert torch.equal(with_head(x), without(x))


def test_a_head_that_says_invert_feeds_the_network_the_negated_scan() -> None:
    model = build_model(ModelConfig()).eval()
    with torch.no_grad():
        model.polarity.decide.bias.fill_(5.0)  # "invert" for every scan
    plain = build_model(ModelConfig(polarity=False)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("polarity.")})
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(model(x), plain(-x))
    assert torch.equal(model.canonical(x), -x)


def test_defect_contrast_reads_the_sign_of_each_domains_flaws() -> None:
    bright = [c for c in (defect_contrast(x, y) for x, y in pairs(BRIGHT, 16)) if c is not None]
    dark = [c for c in (defect_contrast(x, y) for x, y in pairs(DARK, 16)) if c is not None]
    assert len(bright) >= 12 and len(dark) >= 12  # the rest have no flaw
    assert all(c > 0 for c in bright)
    assert sum(c < 0 for c in dark) >= 0.8 * len(dark)  # tungsten inclusions read bright on a print
    empty = torch.zeros(64, 64, dtype=torch.uint8)
    assert defect_contrast(torch.randn(1, 64, 64), empty) is None


def test_a_domain_is_dark_when_most_of_its_defect_scans_are() -> None:
    polarity = DomainPolarity()
    assert polarity.dark(DARK) is None
    for x, y in pairs(DARK, 10):
        polarity.observe(DARK, x, y)
    for x, y in pairs(BRIGHT, 10):
        polarity.observe(BRIGHT, x, y)
    assert polarity.dark(DARK) is True and polarity.dark(BRIGHT) is False
    assert polarity.dark_domains() == [DARK]
    restored = DomainPolarity()
    restored.load_state_dict(polarity.state_dict())
    assert restored.summary() == polarity.summary()


def test_weights_saved_before_the_head_load_and_keep_the_old_function() -> None:
    old = build_model(ModelConfig(polarity=False), seed=3).eval()
    new = build_model(ModelConfig(), seed=0).eval()
    with torch.no_grad():
        new.polarity.decide.bias.fill_(5.0)  # a trained head that would invert: loading old weights resets it
    load_weights(new, old.state_dict())
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(new(x), old(x))
    with pytest.raises(RuntimeError, match="do not fit"):
        load_weights(new, {"encoder.nonsense": torch.zeros(1)})


def test_manifests_written_before_the_head_rebuild_models_without_one() -> None:
    stored = ModelConfig(polarity=False).to_dict()
    del stored["polarity"]
    assert ModelConfig.from_dict(stored).polarity is False
    assert ModelConfig.from_dict(ModelConfig().to_dict()).polarity is True


def test_the_drift_summary_sees_the_scan_as_the_network_does() -> None:
    keeps = build_model(ModelConfig()).eval()
    inverts = copy.deepcopy(keeps)
    with torch.no_grad():
        inverts.polarity.decide.bias.fill_(5.0)
    x = torch.randn(4, 1, 64, 64)
    assert torch.equal(encoder_summary(inverts, x, stride=32), encoder_summary(keeps, -x, stride=32))


def test_the_learner_teaches_the_head_to_invert_the_dark_domain_only(tmp_path: Path) -> None:
    """Labels of a bright and a dark domain: within 60 steps the model inverts the dark domain's unseen scans
    and keeps the bright one's; the decision and its evidence survive a checkpoint."""
    cfg = LearnerConfig(model_dir=tmp_path, seed=0, batch_size=4, memory_per_domain=40, warmup_steps=1,
                        step=StepConfig(strategy="replay", rehearsal=4))
    learner = ContinualLearner(cfg, torch.device("cpu"))
    for domain in (BRIGHT, DARK):
        for i, (x, y) in enumerate(pairs(domain, 30)):
            learner.add(LabeledSample(f"{domain}-{i}", domain, x, y, 0.0))
    learner.absorb()
    assert learner.polarity.dark_domains() == [DARK]
    learner.train_for(60, max_seconds=1e9)
    model = learner.model.eval()
    unseen_dark = torch.stack([x for x, _ in pairs(DARK, 16, base=5000)])
    unseen_bright = torch.stack([x for x, _ in pairs(BRIGHT, 16, base=5000)])
    assert int(model.inverts(unseen_dark).sum()) >= 15
    assert int(model.inverts(unseen_bright).sum()) <= 1
    restored = ContinualLearner(cfg, torch.device("cpu"))
    restored.load_state_dict(learner.state_dict())
    assert restored.polarity.summary() == learner.polarity.summary()
    assert torch.equal(restored.model.eval().inverts(unseen_dark), model.inverts(unseen_dark))


def test_a_stream_without_dark_defects_never_trains_the_head(tmp_path: Path) -> None:
    cfg = LearnerConfig(model_dir=tmp_path, seed=0, batch_size=4, warmup_steps=1)
    learner = ContinualLearner(cfg, torch.device("cpu"))
    for i, (x, y) in enumerate(pairs(BRIGHT, 6)):
        learner.add(LabeledSample(f"b-{i}", BRIGHT, x, y, 0.0))
    start = {k: v.clone() for k, v in learner.model.polarity.state_dict().items()}
    learner.train_for(5, max_seconds=1e9)
    assert all(torch.equal(v, learner.model.polarity.state_dict()[k]) for k, v in start.items())


def test_the_head_answers_any_scan_size_and_channel_count() -> None:
    head = PolarityHead(in_channels=3)
    for shape in ((1, 3, 32, 32), (2, 3, 96, 200), (1, 3, 257, 31)):
        assert head(torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))).shape == (
            shape[0],)


def test_a_published_version_records_which_domains_it_inverts(tmp_path: Path) -> None:
    cfg = learner_config("unused:9092", tmp_path / "models", regression_tolerance=1.0)
    learner = ContinualLearner(cfg, torch.device("cpu"))
    validation = ValidationSets(cap=8)
    for domain in (BRIGHT, DARK):
        for i, (x, y) in enumerate(pairs(domain, 6)):
            learner.polarity.observe(domain, x, y)
            validation.add(f"{domain}-{i}", domain, x, y)
    decision = Publisher(cfg, WeightStore(cfg.model_dir), torch.device("cpu")).consider(learner, validation, offsets=[])
    assert decision.manifest is not None
    recorded = decision.manifest.metrics[POLARITY_KEY]
    assert recorded == learner.polarity.summary() and recorded[DARK]["dark"] and not recorded[BRIGHT]["dark"]
    assert describe(recorded).startswith(f"{DARK} (")
