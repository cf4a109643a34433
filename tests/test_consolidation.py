"""Consolidation: an EWC pass over the labeled topic is published and the online learner adopts it; a
stopped job resumes where it was; LFL's wrapped model converts back to the served U-Net exactly."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from weldstream.dev.rig import Schedule, produce_stream
from weldstream.learner.checkpoint import checkpoint_path, load_checkpoint
from weldstream.learner.consolidate_config import ConsolidateConfig
from weldstream.learner.consolidation import PROGRESS_FILE, Consolidation, Stopped, consolidate
from weldstream.learner.corpus import read_folder
from weldstream.learner.loop import run
from weldstream.model import ModelConfig, build_model
from weldstream.preprocess import training_pair
from weldstream.registry import open_registry
from weldstream.simulator import generate_scan
from weldstream.simulator.dataset import write_dataset
from weldstream.weight_store import WeightStore

from .conftest import learner_config
from .test_learner_stream import wait_for

DOMAINS = ["ut-pe100-5mhz", "xray-film-steel-x52"]
CPU = torch.device("cpu")


def _quick(model_dir, **overrides) -> ConsolidateConfig:
    base = dict(model_dir=model_dir, epochs=1, crops_per_scan=2, batch_size=4, crop_size=64, device="cpu",
                regression_tolerance=1.0, progress=False)
    base.update(overrides)
    return ConsolidateConfig(**base)


async def test_an_ewc_consolidation_is_published_and_the_learner_adopts_it(broker, tmp_path):
    model_dir = tmp_path / "models"
    store = WeightStore(model_dir)
    stop = asyncio.Event()
    learner = asyncio.create_task(run(learner_config(broker.bootstrap, model_dir), stop))
    registry = open_registry("", model_dir)
    try:
        await produce_stream(broker.bootstrap, Schedule.parse(",".join(f"{d}:16" for d in DOMAINS)), rate=0,
                             size=(64, 64), seed=3)
        await wait_for(lambda: (store.latest() or 0) >= 1, 120, "the learner's first version")
        outcome = await consolidate(_quick(model_dir, strategy="ewc", kafka=broker.bootstrap, learning_rate=1e-4))
        decision = outcome.decision
        assert decision.promoted, decision.reason
        version = decision.manifest.version
        manifest = store.manifest(version)
        assert manifest.strategy == "consolidate-ewc" and manifest.parent_version == outcome.started_from >= 1
        assert set(manifest.scores) <= set(DOMAINS) and manifest.metrics["domains"] == DOMAINS
        assert sum(o["offset"] for o in manifest.offsets) == 32  # the whole topic, replayed from the start
        await wait_for(lambda: any(a.action == "adopt" and a.version == version for a in registry.actions()), 120,
                       "the online learner to adopt the consolidated version")
    finally:
        stop.set()
        await asyncio.wait_for(learner, 60)
    state = load_checkpoint(checkpoint_path(model_dir), CPU)
    assert version in registry.lineage(state["parent_version"])  # the learner's lineage goes through it
    assert [r.outcome for r in registry.rounds() if r.trainer == "consolidate"] == ["promoted"]
    consolidated = [r for r in registry.rounds() if r.trainer == "consolidate"][0]
    assert consolidated.version == version and consolidated.strategy == "ewc" and consolidated.steps > 0
    registry.close()


def test_a_stopped_joint_job_resumes_from_its_last_finished_unit(tmp_path):
    for domain, seed in zip(DOMAINS, (0, 50), strict=True):
        write_dataset(tmp_path / "scans" / domain, domain, 6, seed=seed, size=(64, 64))
    cfg = _quick(tmp_path / "models", strategy="joint", kafka=None, data=str(tmp_path / "scans"), epochs=2)
    store = WeightStore(cfg.model_dir)
    corpus = read_folder(tmp_path / "scans", ModelConfig(), cfg.holdout_share)
    stop = threading.Event()
    first = Consolidation(cfg, corpus, store, CPU, stop,
                          progress=lambda done, total: stop.set() if done > total // 2 else None)
    with pytest.raises(Stopped):
        first.run()
    assert (cfg.model_dir / PROGRESS_FILE).exists() and store.latest() is None
    # Meanwhile the online learner publishes: the resumed job still goes on from where it started.
    background = build_model(ModelConfig(), seed=9)
    with torch.no_grad():  # a served version that finds nothing, so any candidate passes the guard
        background.segmentation_head[0].weight.zero_()
        background.segmentation_head[0].bias.copy_(torch.tensor([10.0, 0, 0, 0, 0]))
    store.publish(background.state_dict(), ModelConfig(), parent_version=0)

    second = Consolidation(cfg, read_folder(tmp_path / "scans", ModelConfig(), cfg.holdout_share), store, CPU,
                           threading.Event())
    outcome = second.run()
    assert outcome.resumed_units == 1 and outcome.units == 2 and outcome.steps == second.total_steps()
    assert outcome.started_from == 0 and outcome.decision.compared_with == 1  # judged against what is served
    assert outcome.decision.promoted and store.manifest(2).strategy == "consolidate-joint"
    assert store.manifest(2).parent_version == 0
    assert not (cfg.model_dir / PROGRESS_FILE).exists()


def test_lfl_weights_convert_back_to_the_served_unet_exactly():
    from weldstream.learner.lfl_model import LFLSegmenter

    unet = build_model(ModelConfig(), seed=4).eval()
    wrapped = LFLSegmenter(build_model(ModelConfig(), seed=4))
    with torch.no_grad():
        wrapped.head.weight.mul_(1.5)  # as if LFL had trained the head
    served = build_model(ModelConfig(), seed=None).eval()
    served.load_state_dict(wrapped.unet_state_dict(unet))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(served(x), wrapped.eval()(x), rtol=1e-4, atol=1e-4)


def test_lfl_keeps_the_polarity_head_and_its_decision():
    from weldstream.learner.lfl_model import LFLSegmenter

    unet = build_model(ModelConfig(), seed=4)
    with torch.no_grad():
        unet.polarity.decide.bias.fill_(5.0)  # a head that inverts every scan
    wrapped = LFLSegmenter(unet).eval()
    served = build_model(ModelConfig(), seed=None).eval()
    served.load_state_dict(wrapped.unet_state_dict(build_model(ModelConfig(), seed=None)))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(served(x), wrapped(x), rtol=1e-4, atol=1e-4)
        assert bool(served.inverts(x).all())


def test_a_consolidation_from_scratch_teaches_the_polarity_head_first(tmp_path):
    for domain, seed in zip(DOMAINS, (0, 50), strict=True):
        write_dataset(tmp_path / "scans" / domain, domain, 12, seed=seed, size=(64, 64))
    cfg = _quick(tmp_path / "models", strategy="joint", kafka=None, data=str(tmp_path / "scans"), from_scratch=True)
    store = WeightStore(cfg.model_dir)
    outcome = Consolidation(cfg, read_folder(tmp_path / "scans", ModelConfig(), cfg.holdout_share), store, CPU,
                            threading.Event()).run()
    assert outcome.decision.promoted
    recorded = store.manifest(outcome.decision.manifest.version).metrics["polarity"]
    assert recorded["xray-film-steel-x52"]["dark"] and not recorded["ut-pe100-5mhz"]["dark"]
    model = build_model(ModelConfig(), seed=None).eval()
    model.load_state_dict(store.load(outcome.decision.manifest.version).state_dict)
    unseen = {d: torch.stack([training_pair(s.image, s.mask)[0] for s in (generate_scan(d, 7000 + i, (64, 64))
                                                                          for i in range(12))]) for d in DOMAINS}
    assert int(model.inverts(unseen["xray-film-steel-x52"]).sum()) >= 11
    assert int(model.inverts(unseen["ut-pe100-5mhz"]).sum()) <= 1
