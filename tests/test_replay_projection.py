"""GEM / A-GEM projection math against quadprog, KKT conditions and gradient flattening."""

from __future__ import annotations

import numpy as np
import pytest
import quadprog
import torch
from torch import nn

from weldstream.replay.projection import (
    _BLOCK,
    blockwise_products,
    flatten_grads,
    memory_dot_products,
    project_agem,
    project_gem,
    solve_gem_dual,
    write_grads,
)

P_DIM = 1000


def quadprog_gem(g: torch.Tensor, G: torch.Tensor, margin: float, eps: float) -> np.ndarray:
    """The reference implementation (GEM paper code / Avalanche's GEMPlugin) in numpy, with its ridge
    made relative to the Gram matrix's mean diagonal as weldstream's is."""
    memories_np = G.double().numpy()
    gradient_np = g.double().numpy()
    t = memories_np.shape[0]
    P = memories_np @ memories_np.T
    P = 0.5 * (P + P.T) + np.eye(t) * eps * np.diag(P).mean()
    q = (memories_np @ gradient_np) * -1
    v = quadprog.solve_qp(P, q, np.eye(t), np.zeros(t) + margin)[0]
    return v @ memories_np + gradient_np


def conflicting(seed: int, t: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated memory gradients G (t, P) and a g that violates at least one constraint."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, P_DIM, generator=gen)
    G = torch.randn(t, P_DIM, generator=gen) + 0.8 * shared
    g = torch.randn(P_DIM, generator=gen) - 0.6 * shared[0] * (1 + seed % 3)
    if not bool((G @ g < 0).any()):
        g = -g
    return g.to(dtype), G.to(dtype)


@pytest.mark.parametrize("t", range(1, 7))
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("margin", "eps"), [(0.5, 1e-3), (0.0, 1e-3), (0.1, 0.0)])
def test_project_gem_matches_quadprog(seed: int, t: int, margin: float, eps: float) -> None:
    g, G = conflicting(seed, t)
    projected, violated = project_gem(g, G, margin=margin, eps=eps)
    assert violated
    expected = quadprog_gem(g, G, margin, eps)
    np.testing.assert_allclose(projected.numpy(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-5, 1.0, 1e3])
def test_the_ridge_scales_with_the_gradients_so_constraints_hold_at_any_scale(scale: float) -> None:
    """An absolute ridge of 1e-3 swamps gradients of norm ~1e-4 and leaves constraints violated."""
    g, G = conflicting(1, 4, dtype=torch.float64)
    g, G = g * scale, G * scale
    projected, _ = project_gem(g, G, margin=0.0, eps=1e-3)
    worst = float(memory_dot_products(projected, G).min()) / float(G.norm(dim=1).max() * g.norm())
    assert worst > -1e-3  # feasible up to the ridge, relative to the sizes involved
    absolute = quadprog.solve_qp(*_absolute_ridge_qp(g, G, 1e-3))[0] @ G.numpy() + g.numpy()
    if scale < 1e-3:
        assert float((G.numpy() @ absolute).min()) / float(G.norm(dim=1).max() * g.norm()) < -0.1


def _absolute_ridge_qp(g: torch.Tensor, G: torch.Tensor, eps: float) -> tuple[np.ndarray, ...]:
    Gn, t = G.numpy(), G.shape[0]
    return 0.5 * (Gn @ Gn.T + (Gn @ Gn.T).T) + np.eye(t) * eps, -(Gn @ g.numpy()), np.eye(t), np.zeros(t)


@pytest.mark.parametrize("t", range(1, 7))
def test_project_gem_leaves_a_feasible_gradient_unchanged(t: int) -> None:
    gen = torch.Generator().manual_seed(t)
    g = torch.randn(P_DIM, generator=gen)
    G = g + 0.5 * torch.randn(t, P_DIM, generator=gen)  # every <g, G_k> > 0
    assert bool((G @ g > 0).all())
    projected, violated = project_gem(g, G)
    assert not violated
    assert projected is g


@pytest.mark.parametrize("t", range(1, 7))
@pytest.mark.parametrize("seed", range(3))
def test_projected_gradient_satisfies_every_constraint(seed: int, t: int) -> None:
    g, G = conflicting(seed, t, dtype=torch.float64)
    projected, violated = project_gem(g, G, margin=0.0, eps=0.0)
    assert violated
    dots = memory_dot_products(projected, G)
    assert (dots >= -1e-6).all()
    # ...and it is the closest such gradient (primal KKT): g̃ - g = Gᵀ v with v >= 0, and v_k > 0 only
    # where the constraint is tight.
    v = torch.linalg.lstsq(G.T, (projected - g)[:, None]).solution[:, 0]
    torch.testing.assert_close(G.T @ v, projected - g)
    assert (v >= -1e-9).all()
    assert (v * dots).abs().max() < 1e-6


def test_blockwise_products_past_one_block_match_float64() -> None:
    gen = torch.Generator().manual_seed(7)
    G = torch.randn(3, 2 * _BLOCK + 77, generator=gen)
    g = torch.randn(2 * _BLOCK + 77, generator=gen)
    exact = G.double() @ G.double().T
    scale = float(exact.abs().max())
    torch.testing.assert_close(blockwise_products(G, G), exact, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(memory_dot_products(g, G), G.double() @ g.double(), rtol=1e-5, atol=1e-3)

    g = g - 0.5 * G.sum(0)  # make it violate, then compare the whole projection with quadprog
    projected, violated = project_gem(g, G)
    assert violated
    np.testing.assert_allclose(projected.numpy(), quadprog_gem(g, G, 0.5, 1e-3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 5, 12, 20])
@pytest.mark.parametrize("seed", range(5))
def test_solve_gem_dual_kkt(seed: int, t: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    A = torch.randn(t, 3 * t + 5, generator=gen, dtype=torch.float64)
    M = A @ A.T + 1e-3 * torch.eye(t, dtype=torch.float64)
    b = torch.randn(t, generator=gen, dtype=torch.float64) * 3
    v = solve_gem_dual(M, b)
    grad = M @ v + b
    scale = float(M.abs().max() + b.abs().max())
    assert v.dtype == torch.float64
    assert (v >= 0).all()  # primal feasibility
    assert (grad >= -1e-9 * scale).all()  # dual feasibility
    assert abs(float(v @ grad)) <= 1e-9 * scale * (1 + float(v.abs().sum()))  # complementary slackness
    reference = quadprog.solve_qp(M.numpy(), -b.numpy(), np.eye(t), np.zeros(t))[0]
    np.testing.assert_allclose(v.numpy(), reference, atol=1e-8, rtol=1e-6)


def test_solve_gem_dual_corner_cases() -> None:
    M = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert torch.equal(solve_gem_dual(M, torch.tensor([1.0, 2.0])), torch.zeros(2, dtype=torch.float64))
    b = torch.tensor([-3.0, -4.0], dtype=torch.float64)  # unconstrained minimum is interior
    torch.testing.assert_close(solve_gem_dual(M, b), torch.linalg.solve(M, -b))
    with pytest.raises(ValueError):
        solve_gem_dual(M, torch.zeros(3))


def test_project_agem_is_orthogonal_when_violated() -> None:
    gen = torch.Generator().manual_seed(0)
    g_ref = torch.randn(P_DIM, generator=gen, dtype=torch.float64)
    g = torch.randn(P_DIM, generator=gen, dtype=torch.float64) - g_ref
    assert float(g @ g_ref) < 0
    projected, violated = project_agem(g, g_ref)
    assert violated
    assert abs(float(projected @ g_ref)) < 1e-9 * float(g.norm() * g_ref.norm())
    # The removed part is parallel to g_ref.
    residual = g - projected
    torch.testing.assert_close(residual / residual.norm(), -g_ref / g_ref.norm())

    same, violated = project_agem(-g, g_ref)
    assert not violated and same is not None and torch.equal(same, -g)


def test_flatten_and_write_round_trip() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Linear(2, 2))
    params = list(model.parameters())
    model[0](torch.randn(5, 4)).sum().backward()  # only the first layer gets gradients
    flat = flatten_grads(params)
    assert flat.shape == (sum(p.numel() for p in params),)
    n0 = sum(p.numel() for p in model[0].parameters())
    assert torch.equal(flat[n0:], torch.zeros_like(flat[n0:]))

    target = torch.randn_like(flat)
    write_grads(params, target)
    assert all(p.grad is not None for p in params)
    assert torch.equal(flatten_grads(params), target)
    assert torch.equal(params[0].grad, target[: params[0].numel()].view_as(params[0]))
    with pytest.raises(ValueError):
        write_grads(params, target[:-1])
