"""A version as the learner would publish it, without training: BatchNorm statistics measured on one domain's
scans and the drift references of that domain, for benchmarks and tests of what the server does with a
rig's statistics (an untrained version 0 is served with the version's statistics whatever the rig)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from weldstream.features import REFERENCE_KEY, encoder_summary, reference_of, stage_channels
from weldstream.gain_curve import PROFILE_KEY, as_state, mean_profile
from weldstream.model import ModelConfig, build_model
from weldstream.preprocess import pad_to_multiple, window_intensities
from weldstream.weight_store import Manifest, WeightStore


def normalised(scans: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-size H x W scans -> (N, 1, H, W) as the server normalises them."""
    return window_intensities(torch.as_tensor(np.stack(scans).astype(np.float32))[:, None])


def publish_learned_version(store: WeightStore, domain: str, statistics_scans: Sequence[np.ndarray],
                            reference_scans: Sequence[np.ndarray], seed: int = 0, parent: int | None = None
                            ) -> Manifest:
    """Publish fresh weights whose BatchNorm statistics are those of ``statistics_scans`` and whose drift
    reference for ``domain`` comes from ``reference_scans`` (the next version number, parent the latest)."""
    config = ModelConfig()
    model = build_model(config, seed=seed)
    model.train()
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for start in range(0, len(statistics_scans), 8):
            model(pad_to_multiple(normalised(statistics_scans[start:start + 8]), config.stride))
    model.eval()
    references = normalised(reference_scans)
    summaries = encoder_summary(model, references, config.stride)
    parent_version = (store.latest() or 0) if parent is None else parent
    return store.publish(model.state_dict(), config, parent_version=parent_version,
                         metrics={REFERENCE_KEY: {domain: {
                             **reference_of(summaries, stage_channels(model)),
                             PROFILE_KEY: as_state(mean_profile([references]))}}})
