"""Episodic replay memory and GEM's projection math; imports only the common ``weldstream`` package."""

from weldstream.replay.gem import ReferenceGradients, StepConfig, StepStats, gem_step
from weldstream.replay.memory import ReplayMemory
from weldstream.replay.projection import (
    blockwise_products,
    flatten_grads,
    memory_dot_products,
    project_agem,
    project_gem,
    solve_gem_dual,
    write_grads,
)

__all__ = [
    "ReferenceGradients",
    "ReplayMemory",
    "StepConfig",
    "StepStats",
    "blockwise_products",
    "flatten_grads",
    "gem_step",
    "memory_dot_products",
    "project_agem",
    "project_gem",
    "solve_gem_dual",
    "write_grads",
]
