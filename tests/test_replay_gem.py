"""gem_step on a tiny conv net: constraint honoured, strategies run, round robin, no gradient leak."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from weldstream.losses import segmentation_loss
from weldstream.replay import (
    ReferenceGradients,
    ReplayMemory,
    StepConfig,
    flatten_grads,
    gem_step,
    project_gem,
)

SIZE = 8


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))


def trained_model(defect_class: int = 1, steps: int = 8) -> nn.Module:
    """A tiny model part-way through learning one domain, so a relabelled domain conflicts with it."""
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    x, y = domain_batch(defect_class, n=16, seed=1)
    for _ in range(steps):
        optimizer.zero_grad()
        segmentation_loss(model(x), y).backward()
        optimizer.step()
    return model


def domain_batch(defect_class: int, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright blobs on a dark scan; the domain decides which class the blobs are (so domains conflict)."""
    gen = torch.Generator().manual_seed(seed)
    blobs = torch.rand((n, SIZE, SIZE), generator=gen) > 0.7
    x = blobs[:, None].float() + 0.05 * torch.randn((n, 1, SIZE, SIZE), generator=gen)
    y = blobs.to(torch.uint8) * defect_class
    return x, y


def memory_loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model = copy.deepcopy(model)
    model.zero_grad(set_to_none=True)
    segmentation_loss(model(x), y).backward()
    return flatten_grads(list(model.parameters()))


def params_flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def memory_with(domains: dict[str, int], capacity: int = 8) -> ReplayMemory:
    memory = ReplayMemory(per_domain_capacity=capacity, seed=0)
    for i, (name, cls) in enumerate(domains.items()):
        memory.add(*domain_batch(cls, n=capacity, seed=10 + i), name)
    return memory


@pytest.mark.parametrize("strategy", ["gem", "agem"])
def test_update_does_not_increase_memory_loss_where_naive_would(strategy: str) -> None:
    lr = 1e-3
    memory = memory_with({"old": 1})
    x_mem, y_mem = domain_batch(1, n=8, seed=10)  # exactly what memory holds: the reference batch (memory_batch=8)
    current = domain_batch(2, n=8, seed=99)  # same blobs, other class: conflicts with "old"
    base = trained_model()
    g_mem = memory_loss_gradient(base, x_mem, y_mem)

    def run(cfg: StepConfig) -> tuple[torch.Tensor, float, bool]:
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        stats = gem_step(model, optimizer, current, memory, cfg, "new", ReferenceGradients())
        applied = flatten_grads(list(model.parameters()))  # SGD, no clipping: the update is -lr * applied
        with torch.no_grad():
            after = float(segmentation_loss(model(x_mem), y_mem))
        return applied, after, stats.projected

    g_naive, loss_naive, _ = run(StepConfig(strategy="naive", clip_norm=None))
    g_tilde, loss_after, projected = run(StepConfig(strategy=strategy, clip_norm=None, eps=0.0, memory_batch=8))
    with torch.no_grad():
        loss_before = float(segmentation_loss(base(x_mem), y_mem))

    # First order, the memory loss changes by -lr <g_mem, applied gradient>.
    scale = float(g_mem.norm() * g_naive.norm())
    assert float(g_mem @ g_naive) < -1e-2 * scale  # naive raises the old domain's loss
    assert projected
    assert float(g_mem @ g_tilde) >= -1e-6 * scale  # the projected update does not
    # The real (not first-order) change: naive forgets, the projected step only by second-order terms.
    assert loss_naive > loss_before
    assert loss_after - loss_before <= 0.1 * (loss_naive - loss_before)


def test_applied_gradient_is_the_projection_of_the_clean_gradient() -> None:
    memory = memory_with({"old": 1})
    x_mem, y_mem = domain_batch(1, n=8, seed=10)
    current = domain_batch(2, n=8, seed=99)
    model = trained_model()
    G = memory_loss_gradient(model, x_mem, y_mem)[None]
    g_clean = memory_loss_gradient(model, *current)
    expected, violated = project_gem(g_clean, G, margin=0.5, eps=1e-3)
    assert violated

    cfg = StepConfig(strategy="gem", clip_norm=None, memory_batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    gem_step(model, optimizer, current, memory, cfg, "new", ReferenceGradients())
    torch.testing.assert_close(flatten_grads(list(model.parameters())), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["gem", "agem"])
def test_memory_gradients_do_not_leak_into_the_current_step(strategy: str) -> None:
    memory = memory_with({"old": 1})
    current = domain_batch(1, n=8, seed=10)  # identical to the memory: <g, g_mem> > 0, nothing to project
    model = tiny_model()
    g_clean = memory_loss_gradient(model, *current)
    before = params_flat(model)

    lr = 0.1
    cfg = StepConfig(strategy=strategy, clip_norm=None)
    stats = gem_step(model, torch.optim.SGD(model.parameters(), lr=lr), current, memory, cfg, "new",
                     ReferenceGradients())

    assert stats.violations == 0 and not stats.projected and stats.past_domains == 1
    torch.testing.assert_close(flatten_grads(list(model.parameters())), g_clean)
    torch.testing.assert_close(params_flat(model), before - lr * g_clean)


@pytest.mark.parametrize(
    "cfg",
    [
        StepConfig(strategy="naive"),
        StepConfig(strategy="agem"),
        StepConfig(strategy="gem", refresh="round_robin"),
        StepConfig(strategy="gem", refresh="every_step", memory_batch=3),
    ],
    ids=lambda c: f"{c.strategy}-{c.refresh}",
)
def test_every_strategy_runs(cfg: StepConfig) -> None:
    memory = memory_with({"a": 1, "b": 2, "c": 3})
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    references = ReferenceGradients()
    for step in range(4):
        x, y = domain_batch(4, n=4, seed=step)
        stats = gem_step(model, optimizer, (x, y.long()), memory, cfg, "d", references)
        assert stats.loss > 0 and stats.total_s >= stats.forward_backward_s >= 0
        assert stats.past_domains == (0 if cfg.strategy == "naive" else 3)
        assert 0 <= stats.violations <= (3 if cfg.strategy == "gem" else 1)
        assert stats.projected == (stats.violations > 0)
        if cfg.strategy == "naive":
            assert stats.memory_s < 0.1 and stats.violations == 0
        if cfg.clip_norm is not None:
            assert float(flatten_grads(list(model.parameters())).norm()) <= cfg.clip_norm + 1e-5
    assert references.step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_round_robin_refreshes_exactly_one_past_domain_per_step() -> None:
    memory = memory_with({"a": 1, "b": 2, "c": 3, "d": 4})
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    references = ReferenceGradients()
    cfg = StepConfig(strategy="gem", refresh="round_robin")
    refreshed = []
    for step in range(7):
        gem_step(model, optimizer, domain_batch(4, seed=step), memory, cfg, "d", references)
        fresh = [d for d in "abc" if references.computed_at(d) == step]
        assert len(fresh) == 1
        refreshed.append(fresh[0])
    assert refreshed == list("abcabca")
    assert "d" not in references  # the current domain is never a constraint

    every = ReferenceGradients()
    cfg = StepConfig(strategy="gem", refresh="every_step")
    for step in range(2):
        stats = gem_step(model, optimizer, domain_batch(4, seed=step), memory, cfg, "d", every)
        assert [every.computed_at(d) for d in "abc"] == [step] * 3
        assert stats.past_domains == 3


def test_round_robin_constrains_only_by_domains_with_a_reference() -> None:
    memory = memory_with({"a": 1, "b": 2})
    model = tiny_model()
    references = ReferenceGradients()
    cfg = StepConfig(strategy="gem")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    gem_step(model, optimizer, domain_batch(3), memory, cfg, "c", references)
    assert "a" in references and "b" not in references
    assert references.matrix(["a", "b"]).shape[0] == 1


def test_memory_holding_only_the_current_domain_is_a_plain_step() -> None:
    memory = memory_with({"a": 1})
    model = tiny_model()
    stats = gem_step(model, torch.optim.SGD(model.parameters(), lr=1e-3), domain_batch(1), memory,
                     StepConfig(), "a", ReferenceGradients())
    assert stats.past_domains == 0 and not stats.projected and stats.memory_s < 0.1


def test_step_config_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="gem"):
        StepConfig(strategy="ewc")
    with pytest.raises(ValueError, match="round_robin"):
        StepConfig(refresh="sometimes")
    with pytest.raises(ValueError):
        StepConfig(memory_batch=0)
    with pytest.raises(ValueError):
        StepConfig(clip_norm=0.0)


def _half_loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * memory_loss_gradient(model, x, y)


def test_replay_gem_is_exactly_replay_while_no_past_domain_is_being_forgotten() -> None:
    """Unguarded, the default is a plain replay step: same weights, bit for bit, over several steps (the
    forgetting probe draws nothing at random and leaves BatchNorm's running statistics alone)."""
    runs = {}
    for strategy in ("replay", "replay-gem"):
        memory = memory_with({"old": 1, "older": 3})
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1))
        torch.manual_seed(0)
        model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        references = ReferenceGradients()
        cfg = StepConfig(strategy=strategy, rehearsal=4, memory_batch=4, probe_every=2, forgetting_tolerance=1e6)
        guarded = []
        for step in range(6):
            stats = gem_step(model, optimizer, domain_batch(1, n=4, seed=step), memory, cfg, "new", references)
            guarded.append(stats.guarded)
        runs[strategy] = (params_flat(model), model[1].running_mean.clone(), guarded, references)
    assert torch.equal(runs["replay"][0], runs["replay-gem"][0])
    assert torch.equal(runs["replay"][1], runs["replay-gem"][1])
    assert runs["replay-gem"][2] == [0] * 6
    # The probes ran (both past domains have a record) but no reference gradient was ever computed.
    gate = runs["replay-gem"][3]
    assert gate.probed("old") and gate.probed("older") and "old" not in gate and "older" not in gate


def test_replay_gem_probes_every_probe_every_steps_and_starts_over_when_the_probe_changes() -> None:
    references = ReferenceGradients()
    references.observe_loss("old", 1.0, smoothing=0.5, mark=8)
    references.observe_loss("old", 2.0, smoothing=0.5, mark=8)
    assert references.forgetting("old") == pytest.approx(0.5)  # (0.5 * 1 + 0.5 * 2) / 1 - 1
    references.observe_loss("old", 3.0, smoothing=0.5, mark=9)  # the domain was shown again: new scans
    assert references.forgetting("old") == 0.0

    memory = memory_with({"old": 1})
    model = tiny_model()
    cfg = StepConfig(strategy="replay-gem", rehearsal=4, probe_every=3, forgetting_tolerance=1e6)
    gate = ReferenceGradients()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    losses = []
    for step in range(7):
        gem_step(model, optimizer, domain_batch(2, seed=step), memory, cfg, "new", gate)
        losses.append(gate._loss["old"])
    # Probed at steps 0, 3 and 6 only: the running loss changes exactly there.
    changed = [i for i in range(1, 7) if losses[i] != losses[i - 1]]
    assert changed == [3, 6]


def test_replay_gem_projects_the_current_part_once_a_past_domain_is_being_forgotten() -> None:
    memory = memory_with({"old": 1})
    x_mem, y_mem = domain_batch(1, n=8, seed=10)
    current = domain_batch(2, n=8, seed=99)  # conflicts with "old"
    model = trained_model()
    G = memory_loss_gradient(model, x_mem, y_mem)[None]  # the reference: memory_batch covers the memory
    g_current = _half_loss_gradient(model, *current)
    g_rehearsal = _half_loss_gradient(model, x_mem, y_mem)
    cfg = StepConfig(strategy="replay-gem", clip_norm=None, rehearsal=8, memory_batch=8)
    projected_current, violated = project_gem(g_current, G, margin=cfg.margin, eps=cfg.eps)
    assert violated

    references = ReferenceGradients()
    # Its best probe loss: today's is far above it, so the gate opens.
    references.observe_loss("old", 1e-3, mark=memory.seen()["old"])
    stats = gem_step(model, torch.optim.SGD(model.parameters(), lr=0.0), current, memory, cfg, "new", references)
    applied = flatten_grads(list(model.parameters()))
    assert stats.projected and stats.violations == 1 and stats.guarded == 1
    torch.testing.assert_close(applied, projected_current + g_rehearsal, rtol=1e-4, atol=1e-6)
    # The current crops' part no longer raises the old domain's loss (to first order); rehearsal is kept.
    assert float((applied - g_rehearsal) @ G[0]) >= -1e-6 * float(G.norm() * applied.norm())
    assert stats.min_dot is not None and stats.min_dot >= -1e-6 * float(G.norm() * applied.norm())


def test_replay_gem_releases_a_domain_whose_probe_loss_has_come_back() -> None:
    """Once the probe loss is back within the tolerance the guard lifts, the cached reference is dropped and
    the step is plain replay again (no projection, no reference gradient)."""
    memory = memory_with({"old": 1})
    model = trained_model()
    cfg = StepConfig(strategy="replay-gem", clip_norm=None, rehearsal=8, memory_batch=8, probe_every=1)
    references = ReferenceGradients()
    references.observe_loss("old", 1e-3, mark=memory.seen()["old"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    first = gem_step(model, optimizer, domain_batch(2, n=8, seed=99), memory, cfg, "new", references)
    assert first.guarded == 1 and "old" in references
    references._best["old"] = 1e3  # as if its best had been no better than today
    second = gem_step(model, optimizer, domain_batch(2, n=8, seed=99), memory, cfg, "new", references)
    assert second.guarded == 0 and not second.projected and "old" not in references


def test_memory_first_is_a_fixed_probe_without_random_draws() -> None:
    memory = memory_with({"a": 1, "b": 2})
    state = memory._generator.get_state()
    x1, y1 = memory.first(3, "b")
    x2, _ = memory.first(3, "b")
    assert x1.shape[0] == 3 and torch.equal(x1, x2) and int(y1.max()) == 2
    assert torch.equal(memory._generator.get_state(), state)
    assert memory.first(100, "a")[0].shape[0] == 8
    with pytest.raises(ValueError, match="unknown domain"):
        memory.first(1, "z")


def test_the_forgetting_records_survive_a_checkpoint_and_the_gradient_cache_does_not() -> None:
    """A past domain's best probe loss was measured on weights that no longer exist: a restart that dropped it
    would take today's (already forgotten) loss as the best, and the guard would never open."""
    memory = memory_with({"old": 1})
    model = trained_model()
    cfg = StepConfig(strategy="replay-gem", clip_norm=None, rehearsal=8, memory_batch=8, probe_every=1)
    references = ReferenceGradients()
    references.observe_loss("old", 1e-3, mark=memory.seen()["old"])  # the best it has been
    gem_step(model, torch.optim.SGD(model.parameters(), lr=0.0), domain_batch(2, n=8, seed=99), memory, cfg,
             "new", references)
    assert "old" in references and references.forgetting("old") > cfg.forgetting_tolerance

    restored = ReferenceGradients()
    restored.load_probe_state(references.probe_state())
    assert "old" not in restored  # the gradient is recomputed on the next guarded step
    assert restored.step == references.step == 1
    assert restored.forgetting("old") == references.forgetting("old")
    stats = gem_step(model, torch.optim.SGD(model.parameters(), lr=0.0), domain_batch(2, n=8, seed=99), memory,
                     cfg, "new", restored)
    assert stats.guarded == 1 and stats.projected

    started_over = ReferenceGradients()  # what a restart did before: the guard does not open
    assert gem_step(model, torch.optim.SGD(model.parameters(), lr=0.0), domain_batch(2, n=8, seed=99), memory,
                    cfg, "new", started_over).guarded == 0
