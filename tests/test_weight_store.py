import pytest
import torch

from weldstream.errors import CorruptVersion
from weldstream.model import ModelConfig, build_model
from weldstream.weight_store import WEIGHTS_FILE, WeightStore


def test_publish_and_load_round_trip(tmp_path):
    store = WeightStore(tmp_path)
    assert store.latest() is None
    model = build_model(ModelConfig())
    manifest = store.publish(model.state_dict(), ModelConfig(), parent_version=0, strategy="gem",
                             scores={"ut": {"miou": 0.5, "dice": 0.6, "samples": 10}})
    assert manifest.version == 1 and store.latest() == 1
    loaded = store.load(1)
    assert loaded.manifest.sha256 == manifest.sha256 and loaded.manifest.strategy == "gem"
    assert loaded.model_config == ModelConfig()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict[key], value)
    second = store.publish(model.state_dict(), ModelConfig(), parent_version=1)
    assert second.version == 2 and store.versions() == [1, 2]


def test_versions_are_immutable(tmp_path):
    store = WeightStore(tmp_path)
    state = build_model(ModelConfig()).state_dict()
    store.publish(state, ModelConfig(), parent_version=0, version=5)
    with pytest.raises(FileExistsError):
        store.publish(state, ModelConfig(), parent_version=0, version=5)


def test_corrupted_weights_are_refused(tmp_path):
    store = WeightStore(tmp_path)
    store.publish(build_model(ModelConfig()).state_dict(), ModelConfig(), parent_version=0)
    path = store.path_of(1) / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptVersion, match="does not match"):
        store.load(1)


def test_half_written_versions_are_invisible(tmp_path):
    store = WeightStore(tmp_path)
    (store.versions_dir / ".tmp-abc").mkdir()
    assert store.versions() == []


def test_published_versions_are_readable_by_other_users(tmp_path):
    store = WeightStore(tmp_path)
    store.publish(build_model(ModelConfig()).state_dict(), ModelConfig(), parent_version=0)
    assert store.path_of(1).stat().st_mode & 0o777 == 0o755


def test_a_publisher_that_loses_the_race_for_a_number_takes_the_next(tmp_path, monkeypatch):
    """The learner and a consolidation job may publish at once: neither overwrites the other."""
    store = WeightStore(tmp_path)
    state = build_model(ModelConfig()).state_dict()
    store.publish(state, ModelConfig(), parent_version=0)
    real_latest, looks = store.latest, []

    def latest() -> int | None:  # the first look misses version 1, just written by the other writer
        looks.append(1)
        return None if len(looks) == 1 else real_latest()

    monkeypatch.setattr(store, "latest", latest)
    manifest = store.publish(state, ModelConfig(), parent_version=1, strategy="consolidate-ewc")
    assert manifest.version == 2 and store.manifest(1).strategy == "" and store.versions() == [1, 2]
