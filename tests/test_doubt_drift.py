"""Doubt, drift and the change detector, without a server: fast unit tests plus one tiny trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weldstream.features import encoder_summary, reference_of
from weldstream.model import ModelConfig, build_model
from weldstream.preprocess import training_pair
from weldstream.server.doubt import scan_doubt
from weldstream.server.drift import DriftConfig, DriftMonitor, References
from weldstream.server.inference import predict_batch
from weldstream.server.loader import fresh_model
from weldstream.server.metrics import OTHER_RIG, UNNAMED_RIG, RigLabels
from weldstream.server.page_hinkley import PageHinkley
from weldstream.server.regions import defect_regions
from weldstream.simulator import generate_scan
from weldstream.tiles import segment_maps
from weldstream.weight_store import Manifest

TRAINED, UNSEEN = "ut-pe100-5mhz", "xray-film-steel-x52"
TINY = ModelConfig(encoder_depth=3, decoder_channels=(32, 16, 8))  # a few steps on 2 CPU cores take seconds


def scans_of(domain: str, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [training_pair(s.image, s.mask) for s in (generate_scan(domain, first + i, (64, 64)) for i in range(count))]
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A tiny U-Net trained for a few steps on one ultrasonic domain only."""
    x, y = scans_of(TRAINED, 0, 48)
    model = build_model(TINY, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(25):
        index = torch.randint(0, len(x), (8,), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def test_doubt_is_higher_on_an_unseen_domain_than_on_the_trained_one(trained):
    known, _ = scans_of(TRAINED, 5000, 12)
    unseen, _ = scans_of(UNSEEN, 5000, 12)
    doubts = {}
    for name, images in (("known", known), ("unseen", unseen)):
        entropy = segment_maps(trained, images, TINY.stride, with_entropy=True).entropy
        assert entropy is not None
        doubts[name] = scan_doubt(entropy)
    assert float(doubts["unseen"].mean()) > float(doubts["known"].mean())
    assert float(doubts["unseen"].min()) > float(doubts["known"].median())


def test_drift_distance_is_near_one_on_the_reference_domain_and_far_off_it(trained):
    reference, _ = scans_of(TRAINED, 0, 48)
    references = References.from_stats({TRAINED: reference_of(encoder_summary(trained, reference, TINY.stride))})
    known, _ = scans_of(TRAINED, 5000, 12)
    unseen, _ = scans_of(UNSEEN, 5000, 12)
    near = [references.distance(f.numpy())[0] for f in encoder_summary(trained, known, TINY.stride)]
    far = [references.distance(f.numpy())[0] for f in encoder_summary(trained, unseen, TINY.stride)]
    assert np.median(near) < 2 and min(far) > 2 * np.median(near)
    assert references.distance(encoder_summary(trained, unseen[:1], TINY.stride)[0].numpy())[1] == TRAINED


def test_an_untrained_version_doubts_everything():
    loaded = fresh_model(ModelConfig(), torch.device("cpu"))
    scans = [np.random.default_rng(i).random((64, 80)).astype(np.float32) for i in range(3)]
    for prediction in predict_batch(loaded, scans):
        assert prediction.doubt > 0.9
        assert prediction.features is not None and prediction.features.ndim == 1
        assert all(0.9 < region.doubt <= 1 for region in prediction.regions)


def test_scan_doubt_is_the_mean_normalised_entropy_and_regions_keep_their_own():
    entropy = torch.zeros(1, 64, 64)
    entropy[0, 30:34, 30:34] = 0.8  # one doubtful 4 x 4 defect in a clear scan
    assert float(scan_doubt(entropy)) == pytest.approx(0.8 * 16 / 4096)
    mask = np.zeros((64, 64), np.uint8)
    mask[30:34, 30:34] = 1
    [region] = defect_regions(mask, np.ones((64, 64), np.float32), 5, entropy=entropy[0].numpy())
    assert region.doubt == pytest.approx(0.8)


def test_page_hinkley_stays_quiet_on_a_stable_stream_and_flags_a_rise():
    rng = np.random.default_rng(0)
    detector = PageHinkley(delta=0.25, threshold=10.0, min_samples=30)
    assert not any(detector.update(v) for v in rng.normal(1.0, 0.3, 5000))
    flagged_at = next(i for i, v in enumerate(rng.normal(3.0, 0.3, 200)) if detector.update(v))
    assert flagged_at < 10
    assert detector.count == 0  # it starts afresh after an alarm


def test_page_hinkley_waits_for_min_samples_and_checks_its_settings():
    detector = PageHinkley(delta=0.0, threshold=0.5, min_samples=20)
    assert not any(detector.update(v) for v in [0.0] * 5 + [100.0] * 14)
    with pytest.raises(ValueError):
        PageHinkley(threshold=0)


def test_drift_monitor_bootstraps_without_references_and_flags_a_changed_rig():
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(DriftConfig(bootstrap_scans=50, threshold=3.0))
    monitor.follow(0, None)
    readings = [monitor.observe("rig-a", rng.normal(0, 1, 32)) for _ in range(300)]
    assert readings[10].score == 0 and monitor.references is not None
    assert not any(r.event or r.drifting for r in readings)
    shifted = [monitor.observe("rig-a", rng.normal(4, 1, 32)) for _ in range(50)]
    assert any(r.event for r in shifted[:10]) and shifted[-1].drifting
    assert not monitor.observe("rig-b", rng.normal(0, 1, 32)).drifting  # rigs are watched apart


def test_drift_monitor_reads_references_from_the_live_versions_manifest():
    stats = {"a": {"mean": [0.0] * 8, "std": [1.0] * 8, "n": 10}, "b": {"mean": [5.0] * 8, "std": [1.0] * 8, "n": 10}}
    manifest = Manifest(version=3, parent_version=2, sha256="", created_at=0.0, model_config={}, classes=[],
                        metrics={"feature_reference": stats})
    monitor = DriftMonitor()
    monitor.follow(3, manifest)
    reading = monitor.observe("rig", np.full(8, 5.0))
    assert reading.distance == pytest.approx(0.0) and not reading.drifting
    assert monitor.references is not None and monitor.references.distance(np.zeros(8))[1] == "a"


def test_rig_labels_are_bounded():
    labels = RigLabels(limit=2)
    assert [labels(r) for r in ("a", "b", "c", "a", "")] == ["a", "b", OTHER_RIG, "a", UNNAMED_RIG]


def test_every_encoder_stage_weighs_the_same_in_the_distance():
    stats = {"a": {"mean": [0.0] * 4, "std": [1.0] * 4, "n": 10, "stages": [1, 3]}}
    references = References.from_stats(stats)
    assert references is not None
    assert references.distance(np.array([2.0, 0, 0, 0]))[0] == pytest.approx(np.sqrt(2))  # one channel: half
    assert references.distance(np.array([0.0, 2, 2, 2]))[0] == pytest.approx(np.sqrt(2))  # three channels: half


def test_onnxruntime_serves_the_doubt_and_drift_features_of_eager_torch(trained):
    """Whatever ``--backend`` serves, the review loop reads the same doubt and drift: on simulator scans of
    a learned and an unseen domain, ONNX Runtime's scan and region doubt and pooled features match eager
    torch's."""
    import dataclasses

    from weldstream.server.backends import BackendSettings
    from weldstream.server.loader import with_backend

    eager = dataclasses.replace(fresh_model(TINY, torch.device("cpu")), module=trained)
    onnx = with_backend(eager, BackendSettings("onnxruntime", threads=2))
    assert onnx.runner.name == "onnxruntime" and onnx.backend_refused == ""
    scans = [generate_scan(domain, 7000 + i, size).image
             for domain in (TRAINED, UNSEEN) for i, size in enumerate(((64, 64), (64, 64), (96, 160)))]
    reference = References.from_stats({TRAINED: reference_of(encoder_summary(trained, scans_of(TRAINED, 0, 16)[0],
                                                                              TINY.stride))})
    ours, theirs = predict_batch(onnx, scans), predict_batch(eager, scans)
    assert min(p.doubt for p in theirs) < 0.9  # a trained model: not the untrained near-uniform guess
    for served, expected in zip(ours, theirs, strict=True):
        assert np.mean(served.mask == expected.mask) >= 0.999
        assert served.doubt == pytest.approx(expected.doubt, abs=1e-3)
        assert served.features is not None and expected.features is not None
        np.testing.assert_allclose(served.features, expected.features, rtol=1e-3, atol=1e-4)
        assert reference.distance(served.features)[0] == pytest.approx(reference.distance(expected.features)[0],
                                                                       rel=1e-3)
        by_box = {(r.class_id, r.x, r.y, r.width, r.height): r.doubt for r in expected.regions}
        for region in served.regions:
            key = (region.class_id, region.x, region.y, region.width, region.height)
            if key in by_box:
                assert region.doubt == pytest.approx(by_box[key], abs=1e-3)


def test_held_out_scans_give_each_domain_a_feature_reference(trained):
    from weldstream.learner.holdout import ValidationSets

    validation = ValidationSets(cap=8)
    for domain in (TRAINED, UNSEEN):
        x, y = scans_of(domain, 7000, 4)
        for i in range(4):
            validation.add(f"{domain}-{i}", domain, x[i], y[i])
    references = validation.feature_reference(trained, TINY.stride)
    assert set(references) == {TRAINED, UNSEEN}
    stages = references[TRAINED]["stages"]
    assert stages == list(trained.encoder.out_channels[1:]) and len(references[TRAINED]["mean"]) == sum(stages)
    assert trained.training is False
