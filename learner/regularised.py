"""Avalanche's regularisation strategies (EWC, SI, LFL) set up for weld segmentation.

Each domain is one experience: an ``AvalancheDataset`` of (crop, mask) pairs with task label 0 on every
sample (without it Avalanche would read the mask as the task id). The criterion is the learner's
``segmentation_loss``. Avalanche's own evaluation is off (its accuracy metric assumes class labels).
Needs the ``consolidate`` (or ``bench``) extra.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.benchmarks.utils import make_avalanche_dataset
from avalanche.benchmarks.utils.data_attribute import TaskLabels
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import EWC, LFL, SynapticIntelligence
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from weldstream.losses import segmentation_loss

REGULARISED = ("ewc", "si", "lfl")


@dataclass(frozen=True)
class Strengths:
    """Regularisation strengths: ContinualAI's continual-learning-baselines values, untuned here."""

    ewc_lambda: float = 1.0
    si_lambda: float = 0.1
    si_eps: float = 0.1
    lfl_lambda: float = 1e-4


def experience_dataset(x: Tensor, y: Tensor) -> Any:
    """(scan, mask) pairs with task label 0 appended to every sample."""
    return make_avalanche_dataset(TensorDataset(x, y), data_attributes=[TaskLabels([0] * len(x))])


def regularised_strategy(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, strengths: Strengths, *,
                         train_mb_size: int, train_epochs: int, eval_mb_size: int, device: str | torch.device,
                         plugins: list[SupervisedPlugin]) -> Any:
    """Avalanche's EWC (separate penalties per experience), SI or LFL over ``model``.

    LFL needs the model wrapped in ``LFLSegmenter`` (features + a final nn.Linear) by the caller.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "No loggers specified")  # on purpose: scores are ours, not Avalanche's
        evaluator = EvaluationPlugin(loggers=[])
    common: dict[str, Any] = dict(
        model=model, optimizer=optimizer, criterion=segmentation_loss, train_mb_size=train_mb_size,
        train_epochs=train_epochs, eval_mb_size=eval_mb_size, device=device, plugins=plugins, evaluator=evaluator,
    )
    if name == "ewc":
        return EWC(ewc_lambda=strengths.ewc_lambda, mode="separate", **common)
    if name == "si":
        return SynapticIntelligence(si_lambda=strengths.si_lambda, eps=strengths.si_eps, **common)
    if name == "lfl":
        return LFL(lambda_e=strengths.lfl_lambda, **common)
    raise ValueError(f"unknown regularisation strategy {name!r}; choose one of {list(REGULARISED)}")


def setup_line(name: str, strengths: Strengths) -> str:
    return {
        "ewc": f"avalanche EWC(ewc_lambda={strengths.ewc_lambda}, mode='separate')",
        "si": f"avalanche SynapticIntelligence(si_lambda={strengths.si_lambda}, eps={strengths.si_eps})",
        "lfl": f"avalanche LFL(lambda_e={strengths.lfl_lambda}) on LFLSegmenter (features = decoder output, head = "
               "per-pixel nn.Linear equal to the U-Net's 3x3 head); train mode restored after LFL's feature pass",
    }[name]


def restore_train_mode(strategy: Any) -> None:
    """Avalanche 0.6.0's LFLPlugin.compute_features calls model.eval() and never switches back, so from the
    second step of every later experience the model would train with frozen BatchNorm statistics. Call
    before the backward pass; for the other strategies it is a no-op."""
    if not strategy.model.training:
        strategy.model.train()


class Watch(SupervisedPlugin):
    """Runs last at every training event: restores train mode before the backward pass (see
    ``restore_train_mode``), counts iterations and stops the run when asked."""

    def __init__(self, on_iteration: Any) -> None:
        super().__init__()
        self.on_iteration = on_iteration  # called after every iteration; may raise to stop the run

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        restore_train_mode(strategy)

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.on_iteration()


_REGULARISERS = ("EWCPlugin", "SynapticIntelligencePlugin", "LFLPlugin")


def _regulariser(strategy: Any) -> Any:
    return next(p for p in strategy.plugins if type(p).__name__ in _REGULARISERS)


def strategy_state(strategy: Any) -> dict[str, Any]:
    """What a strategy knows of the experiences it has finished: its regulariser's penalties (EWC's
    importances, SI's path integrals, LFL's previous model) and its clock (which experience is next)."""
    return {"regulariser": dict(vars(_regulariser(strategy))), "clock": dict(vars(strategy.clock))}


def load_strategy_state(strategy: Any, state: dict[str, Any]) -> None:
    vars(_regulariser(strategy)).update(state["regulariser"])
    vars(strategy.clock).update(state["clock"])
    if getattr(_regulariser(strategy), "prev_model", None) is not None:
        for param in strategy.model.head.parameters():  # LFL keeps the classifier frozen after experience 1
            param.requires_grad = False
