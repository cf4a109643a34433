"""``ewc``, ``si`` and ``lfl`` for a consolidation job: Avalanche's strategies, one experience per domain.

Needs the ``consolidate`` extra (Avalanche). Progress is saved after each experience with the
strategy's regulariser and clock (see ``regularised.strategy_state``), so a resumed job penalises
forgetting of the domains it learned before it was stopped.
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from torch import Tensor, nn

from weldstream.learner.consolidation import Consolidation
from weldstream.learner.lfl_model import LFLSegmenter
from weldstream.learner.regularised import (
    Strengths,
    Watch,
    experience_dataset,
    load_strategy_state,
    regularised_strategy,
    strategy_state,
)
from weldstream.model import build_model


class AvalancheTrainer:
    def __init__(self, job: Consolidation) -> None:
        self.job = job
        cfg = job.cfg
        self.model: nn.Module = LFLSegmenter(job.model) if cfg.strategy == "lfl" else job.model
        datasets = [experience_dataset(*job._crops(job.corpus.train[d], cfg.crops_per_scan)) for d in job.domains]
        self.benchmark = benchmark_from_datasets(train=datasets, test=datasets)
        strengths = Strengths(ewc_lambda=cfg.ewc_lambda, si_lambda=cfg.si_lambda, lfl_lambda=cfg.lfl_lambda)
        self.strategy = regularised_strategy(
            cfg.strategy, self.model, torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate), strengths,
            train_mb_size=cfg.batch_size, train_epochs=cfg.epochs, eval_mb_size=cfg.batch_size, device=job.device,
            plugins=[])
        self.strategy.plugins.append(Watch(job._stepped))  # after the strategy's own plugins

    def train_unit(self, index: int) -> None:
        torch.manual_seed(self.job.cfg.seed + index)  # Avalanche's loaders shuffle with the global generator
        self.strategy.train(self.benchmark.train_stream[index], num_workers=0, drop_last=True)

    def model_state(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def state(self) -> dict[str, Any]:
        return strategy_state(self.strategy)

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(self.job.saved["model"])
        load_strategy_state(self.strategy, state)

    def unet(self) -> nn.Module:
        if not isinstance(self.model, LFLSegmenter):
            return self.model
        unet = build_model(self.job.model_config, seed=None).to(self.job.device)
        unet.load_state_dict(self.model.unet_state_dict(unet))
        return unet
