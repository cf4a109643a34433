"""The published weights: an exponential average of the trained ones, kept across checkpoints and adoptions."""

from __future__ import annotations

import torch
from torch import nn

from weldstream.learner.averaging import WeightAverage, decay_for
from weldstream.learner.holdout import ValidationSets
from weldstream.learner.publisher import Publisher
from weldstream.learner.trainer import ContinualLearner
from weldstream.weight_store import WeightStore

from .conftest import learner_config, scan_with_a_defect

CPU = torch.device("cpu")


def _net(value: float) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(value)
    return net


def test_an_old_steps_weight_halves_every_half_life():
    assert abs(decay_for(20) ** 20 - 0.5) < 1e-12
    assert decay_for(0) == 0.0
    average, trained = WeightAverage(_net(0.0), half_life_steps=10, trusted_start=True), _net(1.0)
    for _ in range(10):
        average.update(trained)
    for name, tensor in average.model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, torch.full_like(tensor, 0.5), atol=1e-6), name
    for _ in range(10):
        average.update(trained)
    assert torch.allclose(average.model[0].weight, torch.full_like(average.model[0].weight, 0.75), atol=1e-6)


def test_an_untrusted_start_leaves_no_share_in_the_average():
    """Random initial weights are dropped as Adam drops its moments' zero start: the first update copies,
    the second weighs the two steps decay : 1, whatever the start was."""
    average = WeightAverage(_net(-5.0), half_life_steps=10)
    average.update(_net(1.0))
    assert torch.equal(average.model[0].weight, torch.full_like(average.model[0].weight, 1.0))
    average.update(_net(3.0))
    d = decay_for(10)
    expected = (d * 1.0 + 3.0) / (1.0 + d)
    assert torch.allclose(average.model[0].weight, torch.full_like(average.model[0].weight, expected), atol=1e-6)
    assert abs(average.rate() - (1 - d) / (1 - d ** 3)) < 1e-12
    for _ in range(500):
        average.update(_net(3.0))
    assert abs(average.rate() - (1 - d)) < 1e-9  # long after the start, a plain moving average
    average.reset(_net(2.0))  # adopted weights: a trusted start that keeps its share
    average.update(_net(4.0))
    assert torch.allclose(average.model[0].weight, torch.full_like(average.model[0].weight, 2.0 + 2.0 * (1 - d)))


def test_integer_buffers_follow_and_a_zero_half_life_publishes_the_trained_weights():
    trained = _net(3.0)
    trained[1].num_batches_tracked.fill_(7)
    average = WeightAverage(_net(0.0), half_life_steps=0)
    average.update(trained)
    for (name, mine), theirs in zip(average.model.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    assert not any(p.requires_grad for p in average.model.parameters())


def _trained_learner(tmp_path, half_life: float) -> ContinualLearner:
    learner = ContinualLearner(learner_config("unused:9092", tmp_path, crop_size=32, batch_size=2,
                                              max_steps_per_scan=3, average_half_life=half_life), CPU)
    for i in range(3):
        learner.add(scan_with_a_defect(i))
    learner.train_for(max_steps=9, max_seconds=60)
    return learner


def test_the_learner_publishes_an_average_that_trails_its_trained_weights(tmp_path):
    start = ContinualLearner(learner_config("unused:9092", tmp_path, average_half_life=4), CPU).model
    learner = _trained_learner(tmp_path, half_life=4)
    first = next(iter(start.parameters()))
    trained, published = next(iter(learner.model.parameters())), next(iter(learner.published.parameters()))
    moved, trailed = (trained - first).norm(), (published - first).norm()
    assert 0 < trailed < moved  # between where training started and where it is now
    follows = _trained_learner(tmp_path, half_life=0)
    for a, b in zip(follows.model.state_dict().values(), follows.published.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_restores_the_average_and_adopting_weights_resets_it(tmp_path):
    learner = _trained_learner(tmp_path, half_life=4)
    state = learner.state_dict()
    restored = ContinualLearner(learner.cfg, CPU)
    restored.load_state_dict(state)
    for a, b in zip(restored.published.state_dict().values(), learner.published.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert restored.average.updates == learner.average.updates == 9  # the count of steps averaged goes on
    del state["average"]  # a checkpoint from before averaging: the average starts at the trained weights
    older = ContinualLearner(learner.cfg, CPU)
    older.load_state_dict(state)
    for a, b in zip(older.published.state_dict().values(), learner.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    consolidated = ContinualLearner(learner_config("unused:9092", tmp_path, seed=7), CPU).model.state_dict()
    learner.adopt(consolidated)
    for name, tensor in learner.published.state_dict().items():
        assert torch.equal(tensor, consolidated[name]), name


def test_the_version_published_carries_the_averaged_weights(tmp_path):
    learner = _trained_learner(tmp_path, half_life=4)
    validation = ValidationSets(cap=4)
    for i in range(4):
        sample = scan_with_a_defect(100 + i)
        validation.add(sample.scan_id, "ut", sample.x, sample.y)
    store = WeightStore(tmp_path / "models")
    decision = Publisher(learner.cfg, store, CPU).consider(learner, validation, offsets=[])
    assert decision.promoted  # nothing served yet: the first candidate is published
    stored = store.load(decision.manifest.version).state_dict
    for name, tensor in learner.published.state_dict().items():
        assert torch.equal(stored[name], tensor), name
    assert any(not torch.equal(stored[n], t) for n, t in learner.model.state_dict().items() if t.is_floating_point())
