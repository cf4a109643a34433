"""BatchNorm statistics from unlabeled scans: the pooling math, the measuring copy, serving with other statistics."""

from __future__ import annotations

import torch
from torch import nn

from weldstream.model import ModelConfig, build_model
from weldstream.norm_stats import Moments, batchnorm_layers, measure, measuring_copy, with_statistics


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()


def test_pooled_moments_of_single_scans_equal_the_moments_of_all_of_them_at_the_first_layer():
    net = small_net()
    twin = measuring_copy(net)
    images = torch.randn(6, 1, 16, 16) * 3 + 2
    together = measure(twin, images)
    alone = Moments.pooled(measure(twin, image[None]) for image in images)
    first = "1"  # the first BatchNorm's input does not depend on how earlier layers normalised
    assert alone.scans == together.scans == 6
    assert torch.allclose(alone.mean[first], together.mean[first], atol=1e-9)
    assert torch.allclose(alone.variance(first), together.variance(first), atol=1e-9)
    x = net[0](images).double()
    assert torch.allclose(together.mean[first], x.mean(dim=(0, 2, 3)), atol=1e-9)
    assert torch.allclose(together.variance(first), x.var(dim=(0, 2, 3), unbiased=False), atol=1e-6)


def test_the_measuring_copy_leaves_the_served_module_and_its_own_statistics_alone():
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    twin = measuring_copy(net)
    measure(twin, torch.randn(3, 1, 16, 16) * 5)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    for name, tensor in twin.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(tensor, before[name]), name  # momentum 0: the copy's stored statistics never move
    assert not net.training and all(not layer.training for _, layer in batchnorm_layers(net))


def test_blending_by_count_weighs_the_version_like_that_many_scans():
    net = small_net()
    prior = Moments.of_version(net, weight=1.0)
    measured = measure(measuring_copy(net), torch.randn(4, 1, 8, 8) + 10)
    blend = Moments.pooled([prior, measured])
    assert blend.scans == 5
    for name in prior.mean:
        assert torch.allclose(blend.mean[name], (prior.mean[name] + 4 * measured.mean[name]) / 5)
    assert blend.spread is None  # a version's statistics do not say how scans spread


def test_serving_with_the_version_s_own_statistics_gives_its_output_bit_for_bit_and_others_change_it():
    model = build_model(ModelConfig(), seed=1).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        plain = model(x)
        own = with_statistics(model, Moments.of_version(model, 1.0).buffers(), x)
        shifted_stats = measure(measuring_copy(model), x * 4 + 1)
        shifted = with_statistics(model, shifted_stats.buffers(), x)
        again = model(x)
    assert torch.allclose(own, plain, atol=1e-5)
    assert not torch.allclose(shifted, plain, atol=1e-3)
    assert torch.equal(again, plain)  # the module's own statistics are back after the call


def test_a_scan_from_another_rig_lies_far_from_a_rig_s_statistics_and_a_like_scan_does_not():
    net = small_net()
    twin = measuring_copy(net)
    gen = torch.Generator().manual_seed(3)

    def rig_scan(gain: float) -> torch.Tensor:
        return torch.randn(1, 1, 32, 32, generator=gen) * gain + gain

    rig = Moments.pooled(measure(twin, rig_scan(1.0)) for _ in range(16))
    like = [rig.mismatch(measure(twin, rig_scan(1.0))) for _ in range(8)]
    unlike = [rig.mismatch(measure(twin, rig_scan(6.0))) for _ in range(8)]
    assert max(like) < 1.75 < min(unlike)


def test_moments_survive_a_round_trip_through_their_saved_state():
    rig = measure(measuring_copy(small_net()), torch.randn(2, 1, 8, 8))
    back = Moments.from_state(rig.to_state())
    assert back.scans == rig.scans and back.spread is not None
    assert all(torch.equal(back.mean[n], rig.mean[n]) and torch.equal(back.spread[n], rig.spread[n]) for n in rig.mean)
