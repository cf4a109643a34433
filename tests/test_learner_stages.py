"""The learner's stages without a broker: records routed, errors named, positions and checkpoints kept."""

from __future__ import annotations

import time

from aiokafka.structs import ConsumerRecord, TopicPartition

from weldstream.announcements import announcement
from weldstream.dev.rig import labeled_scan
from weldstream.learner.checkpoint import checkpoint_path, load_checkpoint
from weldstream.learner.holdout import is_held_out
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.pipeline import LearnerLoop
from weldstream.simulator import generate_scan
from weldstream.topics import dead_letter_headers
from weldstream.weight_store import Manifest

from .conftest import learner_config

TOPIC = "weld.scans.labeled"


def record(value: bytes, offset: int, key: bytes = b"scan") -> ConsumerRecord:
    return ConsumerRecord(TOPIC, 1, offset, 0, 0, key, value, None, len(key), len(value), [])


def test_records_are_routed_and_bad_ones_name_their_field(tmp_path):
    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models", holdout_share=0.5), LearnerMetrics())
    samples = [generate_scan("ut-pe100-5mhz", seed, (64, 64)) for seed in range(8)]
    for offset, sample in enumerate(samples):
        assert loop.accept(record(labeled_scan(sample, "rig").SerializeToString(), offset)) is None
    held_out = sum(is_held_out(s.scan_id, 0.5) for s in samples)
    assert loop.validation.size("ut-pe100-5mhz") == held_out
    assert len(loop.learner.pending) == len(samples) - held_out

    bad = labeled_scan(samples[0], "rig")
    bad.domain = ""
    error = loop.accept(record(bad.SerializeToString(), 8))
    assert error is not None and error.field == "domain"
    assert loop.positions[TopicPartition(TOPIC, 1)] == 8  # not past the bad record until it is dead-lettered
    headers = dict(dead_letter_headers(record(b"x", 8), error))
    assert headers["field"] == b"domain" and headers["source.offset"] == b"8"
    loop.dead_lettered(record(b"x", 8), error)
    assert loop.positions[TopicPartition(TOPIC, 1)] == 9


async def test_checkpoint_holds_positions_and_pending_scans(tmp_path):
    cfg = learner_config("unused:9092", tmp_path / "models", holdout_share=0.0)
    loop = LearnerLoop(cfg, LearnerMetrics())
    for offset in range(3):
        sample = generate_scan("xray-film-steel-x52", offset, (64, 64))
        loop.accept(record(labeled_scan(sample, "rig").SerializeToString(), offset))
    assert await loop.checkpoint() is True
    assert await loop.checkpoint() is False  # nothing new since
    state = load_checkpoint(checkpoint_path(cfg.model_dir), loop.device)
    assert state["positions"] == {(TOPIC, 1): 3}
    assert len(state["learner"]["pending"]) == 3


def test_announcement_carries_scores_and_offsets():
    manifest = Manifest(version=4, parent_version=3, sha256="ab" * 32, created_at=1.7e9, model_config={},
                        classes=["background", "crack"], strategy="gem",
                        offsets=[{"topic": TOPIC, "partition": 0, "offset": 120}],
                        scores={"ut-pe100-5mhz": {"miou": 0.5, "dice": 0.6, "samples": 12}})
    message = announcement(manifest)
    assert (message.version, message.parent_version, message.location) == (4, 3, "versions/00000004")
    assert message.scores[0].miou == 0.5 and message.offsets[0].offset == 120


def test_without_a_checkpoint_the_learner_goes_on_from_the_newest_stored_version(tmp_path):
    """A first version trained offline (consolidate --strategy joint) is where the online learner starts."""
    import torch

    from weldstream.model import ModelConfig, build_model
    from weldstream.weight_store import WeightStore

    cfg = learner_config("unused:9092", tmp_path / "models")
    first = build_model(ModelConfig(), seed=42).state_dict()
    WeightStore(cfg.model_dir).publish(first, ModelConfig(), parent_version=0, strategy="consolidate-joint")
    loop = LearnerLoop(cfg, LearnerMetrics())
    assert loop.publisher.parent_version == 1 and loop.publisher.live_version == 1
    for model in (loop.learner.model, loop.learner.published):
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, first[name]), name


def test_a_consolidation_published_while_the_learner_judges_is_still_adopted(tmp_path):
    """The job's version lands first (v1), the learner's own candidate after it (v2, from the old lineage):
    the learner must still take v1's weights and name it as its parent, though v1 < v2."""
    import torch

    from weldstream.learner.publisher import Decision
    from weldstream.model import ModelConfig, build_model

    cfg = learner_config("unused:9092", tmp_path / "models")
    loop = LearnerLoop(cfg, LearnerMetrics())
    assert loop.sync_with_store() is None
    consolidated = build_model(ModelConfig(), seed=7).state_dict()
    loop.store.publish(consolidated, ModelConfig(), parent_version=0, strategy="consolidate-ewc")  # v1, mid-judging
    own = loop.publisher.publish(loop.learner.published, Decision(True, {}, {}), loop.validation)
    assert own.manifest.version == 2 and loop.publisher.parent_version == 2
    assert loop.sync_with_store() == 1
    assert loop.publisher.parent_version == 1 and loop.publisher.live_version == 2  # v2 stays served
    for name, tensor in loop.learner.model.state_dict().items():
        assert torch.equal(tensor, consolidated[name]), name
    assert loop.sync_with_store() is None  # adopted once, not again at every judgement


def test_the_step_trigger_waits_until_judging_is_at_most_its_share_of_the_time(tmp_path):
    cfg = learner_config("unused:9092", tmp_path / "models", publish_every_steps=2, publish_every_s=1000.0,
                         judging_share=0.1)
    loop = LearnerLoop(cfg, LearnerMetrics())
    loop.learner.steps = 5  # past the step trigger
    assert loop.publish_due()  # nothing judged yet: no wait
    loop.judging_s = 2.0  # the last judgement took 2 s: 18 s of training first, so judging stays at 10 %
    loop.last_publish = time.monotonic() - 10.0
    assert not loop.publish_due()
    loop.last_publish = time.monotonic() - 19.0
    assert loop.publish_due()
    loop.steps_at_publish, loop.dirty = 5, True  # no new steps, but something new consumed
    loop.last_publish = time.monotonic() - 1001.0
    assert loop.publish_due()  # the seconds trigger still bounds the wait


def test_labels_waiting_to_be_served_let_judging_take_its_fresh_share(tmp_path):
    cfg = learner_config("unused:9092", tmp_path / "models", publish_every_steps=2, publish_every_s=1000.0,
                         judging_share=0.1, fresh_judging_share=0.25)
    loop = LearnerLoop(cfg, LearnerMetrics())
    loop.learner.steps, loop.judging_s = 5, 2.0
    loop.last_publish = time.monotonic() - 7.0  # 2 s of judging in 9 s is 22 %
    assert not loop.publish_due()  # nothing new to serve: 10 %, 18 s
    loop.learner.label_times = [time.time() - 5.0]  # a label learned since the last version
    assert loop.publish_due()
    loop.last_publish = time.monotonic() - 5.0  # 2 s in 7 s is 29 %: too much even now
    assert not loop.publish_due()
