"""Learner faults around delivery, found by reading the code, each reproduced without a broker:
rebalances, the order of checkpoint and publish, a broker that cannot take an announcement or restarted
empty, a full disk, a half-written ledger line."""

from __future__ import annotations

import pytest
from aiokafka.structs import TopicPartition

from weldstream.learner import kafka_io
from weldstream.learner.checkpoint import checkpoint_path, load_checkpoint
from weldstream.learner.judging import publish_and_commit
from weldstream.learner.ledger import read_ledger
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.pipeline import LearnerLoop

from .conftest import learner_config
from .test_learner_faults import TOPIC, FakeConsumer, Unreachable, scan_record


async def test_revoked_partitions_leave_the_positions_to_commit(tmp_path):
    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models", holdout_share=0.0), LearnerMetrics())
    kept, revoked = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    loop.accept(scan_record("ut-pe100-5mhz", 1, offset=4, partition=0))
    loop.accept(scan_record("ut-pe100-5mhz", 2, offset=9, partition=1))
    consumer = FakeConsumer({kept, revoked})
    listener = kafka_io.SeekToCheckpoint(consumer, loop.positions)
    await listener.on_partitions_revoked({revoked})
    consumer.assigned = {kept}
    assert revoked not in loop.positions
    loop.last_publish = 0.0
    await publish_and_commit(loop, consumer, producer=None)
    assert consumer.commits == [{kept: 5}]
    # every judgement's wall time is exported, and it is what the step trigger paces itself by
    judged = loop.metrics.registry.get_sample_value("learner_judging_duration_seconds_count")
    assert judged == 1 and loop.metrics.registry.get_sample_value(
        "learner_judging_duration_seconds_sum") == pytest.approx(loop.judging_s)


async def test_commit_leaves_out_partitions_this_member_does_not_own(tmp_path):
    """A checkpoint restored after a rebalance can hold positions of partitions now owned by another member."""
    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models", holdout_share=0.0), LearnerMetrics())
    loop.accept(scan_record("ut-pe100-5mhz", 1, offset=4, partition=0))
    loop.accept(scan_record("ut-pe100-5mhz", 2, offset=9, partition=2))
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    await publish_and_commit(loop, consumer, producer=None)
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 5}]


class Announcements:
    def __init__(self) -> None:
        self.versions: list[int] = []

    async def send_and_wait(self, topic, value=None, key=None, headers=None):
        from weldstream.v1 import stream_pb2

        self.versions.append(stream_pb2.ModelAnnouncement.FromString(value).version)


async def test_checkpoint_is_written_before_a_version_is_published(tmp_path):
    cfg = learner_config("unused:9092", tmp_path / "models", holdout_share=0.5, max_steps_per_scan=2)
    loop = LearnerLoop(cfg, LearnerMetrics())
    for seed in range(8):
        loop.accept(scan_record("ut-pe100-5mhz", seed, offset=seed))
    loop.record_steps(loop.learner.train_for(4, 30.0))
    assert loop.learner.steps > 0 and loop.validation.domains()
    seen_at_publish: list[int] = []
    publish = loop.publisher.store.publish

    def publish_after_looking(*args, **kwargs):
        state = load_checkpoint(checkpoint_path(cfg.model_dir), loop.device)
        seen_at_publish.append(-1 if state is None else state["learner"]["steps"])
        return publish(*args, **kwargs)

    loop.publisher.store.publish = publish_after_looking
    producer = Announcements()
    await publish_and_commit(loop, FakeConsumer({TopicPartition(TOPIC, 0)}), producer)
    assert producer.versions == [1]
    # the version's training state (its parent for the next version) was on disk before it was published
    assert seen_at_publish == [loop.learner.steps]


async def test_an_announcement_the_broker_cannot_take_does_not_stop_the_learner(tmp_path):
    cfg = learner_config("unused:9092", tmp_path / "models", holdout_share=0.5, max_steps_per_scan=2)
    loop = LearnerLoop(cfg, LearnerMetrics())
    for seed in range(8):
        loop.accept(scan_record("ut-pe100-5mhz", seed, offset=seed))
    loop.record_steps(loop.learner.train_for(4, 30.0))
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    await publish_and_commit(loop, consumer, Unreachable())  # servers still find it by polling the store
    assert loop.store.latest() == 1 and consumer.commits == [{TopicPartition(TOPIC, 0): 8}]


class ForgetfulBroker(FakeConsumer):
    """What a consumer sees after the broker restarted empty: no committed offsets, short logs."""

    def __init__(self, assigned, ends, committed=None):
        super().__init__(assigned)
        self.ends = ends
        self.committed_offsets = committed or {}
        self.seeks: list[tuple[TopicPartition, int | str]] = []

    async def committed(self, tp):
        return self.committed_offsets.get(tp)

    async def end_offsets(self, partitions):
        return {tp: self.ends[tp] for tp in partitions}

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, *partitions):
        self.seeks.extend((tp, "beginning") for tp in partitions)


async def test_a_log_shorter_than_the_checkpoint_is_read_from_its_start():
    shrunk, kept = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    positions = {shrunk: 6, kept: 4}
    checkpointed = dict(positions)
    consumer = ForgetfulBroker({shrunk, kept}, ends={shrunk: 2, kept: 9})
    await kafka_io.SeekToCheckpoint(consumer, positions, checkpointed).on_partitions_assigned({shrunk, kept})
    assert sorted(consumer.seeks) == sorted([(shrunk, "beginning"), (kept, 4)])
    assert shrunk not in positions and shrunk not in checkpointed  # never committed against the new log
    # an offset committed before the restart, and a member that no longer knows its position
    again = ForgetfulBroker({shrunk}, ends={shrunk: 0}, committed={shrunk: 3})
    await kafka_io.SeekToCheckpoint(again, {}, {}).on_partitions_assigned({shrunk})
    assert again.seeks == [(shrunk, "beginning")]


async def test_a_full_disk_commits_nothing_and_the_learner_catches_up_when_space_returns(tmp_path, monkeypatch):
    import errno

    from weldstream.learner import pipeline as loop_module

    cfg = learner_config("unused:9092", tmp_path / "models", holdout_share=0.5, max_steps_per_scan=2)
    loop = LearnerLoop(cfg, LearnerMetrics())
    for seed in range(8):
        loop.accept(scan_record("ut-pe100-5mhz", seed, offset=seed))
    loop.record_steps(loop.learner.train_for(4, 30.0))
    save = loop_module.save_checkpoint

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loop_module, "save_checkpoint", disk_full)
    consumer = FakeConsumer({TopicPartition(TOPIC, 0)})
    await publish_and_commit(loop, consumer, Announcements())
    assert consumer.commits == [] and loop.store.latest() is None  # nothing committed, nothing published
    assert loop.metrics.checkpoint_failures._value.get() == 1
    monkeypatch.setattr(loop_module, "save_checkpoint", save)
    await publish_and_commit(loop, consumer, Announcements())
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 8}] and loop.store.latest() == 1


def test_a_ledger_write_that_fails_leaves_no_half_line(tmp_path, monkeypatch):
    import errno
    import os

    from weldstream.learner import ledger as ledger_module
    from weldstream.learner.ledger import Entry, Ledger

    ledger = Ledger(tmp_path)
    ledger.record(Entry("a", "d", "train", 0, 0))
    ledger.flush()
    ledger.record(Entry("b", "d", "train", 0, 1))

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    fsync = os.fsync
    monkeypatch.setattr(ledger_module.os, "fsync", no_space)
    with pytest.raises(OSError):
        ledger.flush()
    monkeypatch.setattr(ledger_module.os, "fsync", fsync)
    assert [e.scan_id for e in read_ledger(tmp_path)] == ["a"]
    ledger.flush()  # the entry was kept and goes out once there is space
    assert [e.scan_id for e in read_ledger(tmp_path)] == ["a", "b"]


def test_a_half_written_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    from weldstream.learner.ledger import LEDGER_FILE, Entry, Ledger

    ledger = Ledger(tmp_path)
    ledger.record(Entry("a", "d", "train", 0, 0))
    ledger.flush()
    with open(tmp_path / LEDGER_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"scan_id": "b", "dom')  # a SIGKILL or a full disk in the middle of a write
    assert [e.scan_id for e in read_ledger(tmp_path)] == ["a"]
    ledger.record(Entry("c", "d", "train", 0, 2))
    ledger.flush()
    assert [e.scan_id for e in read_ledger(tmp_path)] == ["a", "c"]
