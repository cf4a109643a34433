"""Learner faults in what it reads, found by reading the code, each reproduced without a broker: oversized
dead letters, records that cannot be decoded or even dead-lettered, unbounded domains, a stuck loop.

The fakes here (a consumer, an unreachable producer, scan records) also serve test_learner_delivery.py."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord, TopicPartition

from weldstream.dev.rig import labeled_scan
from weldstream.errors import InvalidInput
from weldstream.learner import kafka_io
from weldstream.learner.ledger import read_ledger
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.pipeline import LearnerLoop
from weldstream.limits import record_bytes
from weldstream.simulator import generate_scan

from .conftest import learner_config

TOPIC = "weld.scans.labeled"


def record(value: bytes, offset: int, partition: int = 0, key: bytes = b"scan") -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, key, value, None, len(key), len(value), [])


def scan_record(domain: str, seed: int, offset: int, partition: int = 0) -> ConsumerRecord:
    sample = generate_scan(domain, seed, (64, 64))
    message = labeled_scan(sample, "rig")
    return record(message.SerializeToString(), offset, partition, key=message.scan_id.encode())


class SizeLimitedProducer:
    """Refuses what a broker with a `limit`-byte message size refuses; remembers what it accepted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[str, bytes, dict[str, bytes]]] = []

    async def send_and_wait(self, topic, value=None, key=None, headers=None):
        size = len(value or b"") + sum(len(k) + len(v) for k, v in headers or [])
        if size > self.limit:
            raise MessageSizeTooLargeError(f"{size} bytes")
        self.sent.append((topic, value or b"", dict(headers or [])))


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = set(assigned)
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets):
        self.commits.append(dict(offsets))

    async def committed(self, tp):
        return None

    def seek(self, tp, offset):
        pass


async def test_dead_letter_producer_carries_a_record_of_the_largest_scan():
    producer = kafka_io.open_producer(learner_config("127.0.0.1:9", "unused"))
    assert producer._max_request_size >= record_bytes()


async def test_oversized_invalid_record_is_dead_lettered_without_its_value():
    producer = SizeLimitedProducer(limit=1 << 20)
    message = record(b"\xff" * (2 << 20), offset=7)
    outcome = await kafka_io.send_dead_letter(producer, "dl", message, InvalidInput("message", "is garbage"))
    assert outcome == "dead_letter"
    [(topic, value, headers)] = producer.sent
    assert topic == "dl" and value == b""
    assert headers["field"] == b"message" and headers["source.offset"] == b"7"
    assert headers["value.dropped"].startswith(b"2097152 bytes")


async def test_a_record_that_cannot_even_be_dead_lettered_is_skipped_and_counted(tmp_path):
    producer = SizeLimitedProducer(limit=10)  # not even the headers fit
    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models"), LearnerMetrics())
    message = record(b"\xff" * 100, offset=3)
    error = loop.accept(message)
    outcome = await kafka_io.send_dead_letter(producer, "dl", message, error)
    assert outcome == "skipped" and not producer.sent
    loop.dead_lettered(message, error, outcome)
    assert loop.positions[TopicPartition(TOPIC, 0)] == 4  # the learner moves on instead of crash-looping
    assert loop.metrics.consumed.labels("skipped")._value.get() == 1
    loop.ledger.flush()
    assert [e.use for e in read_ledger(tmp_path / "models")] == ["skipped"]


async def test_new_domains_are_bounded_by_a_maximum(tmp_path):
    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models", max_domains=2), LearnerMetrics())
    assert loop.accept(scan_record("ut-pe100-5mhz", 1, offset=0)) is None
    assert loop.accept(scan_record("xray-film-steel-x52", 2, offset=1)) is None
    message = labeled_scan(generate_scan("ut-pe100-5mhz", 3, (64, 64)), "rig")
    message.domain = "ut-pe100-5mhz-typo"
    third = record(message.SerializeToString(), offset=2)
    error = loop.accept(third)
    assert error is not None and error.field == "domain" and "maximum of 2" in error.reason
    assert loop.accept(scan_record("ut-pe100-5mhz", 4, offset=3)) is None  # known domains still flow


async def test_an_allowlist_refuses_other_domains_and_survives_a_restart(tmp_path):
    cfg = learner_config("unused:9092", tmp_path / "models", holdout_share=0.0,
                         domain_allowlist=("ut-pe100-5mhz",))
    loop = LearnerLoop(cfg, LearnerMetrics())
    assert loop.accept(scan_record("ut-pe100-5mhz", 1, offset=0)) is None
    error = loop.accept(scan_record("xray-film-steel-x52", 2, offset=1))
    assert error is not None and error.field == "domain" and "allowlist" in error.reason
    await loop.checkpoint()
    again = LearnerLoop(learner_config("unused:9092", tmp_path / "models", max_domains=1), LearnerMetrics())
    assert again.known_domains == {"ut-pe100-5mhz"}
    assert again.accept(scan_record("xray-film-steel-x52", 3, offset=2)) is not None


def test_liveness_follows_loop_progress_not_the_metrics_thread(tmp_path):
    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models", liveness_timeout_s=0.5),
                       LearnerMetrics())
    from weldstream.learner.loop import start_probe_server

    http = start_probe_server(loop)
    try:
        url = f"http://127.0.0.1:{http.server_port}"
        loop.heartbeat()
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            assert response.status == 200 and json.loads(response.read())["live"] is True
        time.sleep(0.7)  # the loop makes no progress; the metrics thread still answers
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        assert refused.value.code == 503
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            assert b"learner_loop_progress_timestamp_seconds" in response.read()
    finally:
        http.shutdown()


def test_a_decoder_failure_of_any_kind_dead_letters_the_record(tmp_path, monkeypatch):
    from weldstream.learner import pipeline as loop_module

    def broken(*args, **kwargs):
        raise ValueError("cannot reshape array of size 0 into shape (4294967296,4294967296)")

    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models"), LearnerMetrics())
    monkeypatch.setattr(loop_module, "decode_record", broken)
    error = loop.accept(scan_record("ut-pe100-5mhz", 1, offset=0))
    assert isinstance(error, InvalidInput) and error.field == "message" and "reshape" in error.reason


class Unreachable:
    """A producer whose broker has gone away."""

    async def send_and_wait(self, *args, **kwargs):
        from aiokafka.errors import KafkaConnectionError

        raise KafkaConnectionError("broker went away")


class SeekingConsumer(FakeConsumer):
    def __init__(self, assigned):
        super().__init__(assigned)
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))


async def test_a_dead_letter_the_broker_cannot_take_is_read_again_not_skipped(tmp_path):
    from weldstream.learner.loop import take_records

    loop = LearnerLoop(learner_config("unused:9092", tmp_path / "models", holdout_share=0.0), LearnerMetrics())
    tp = TopicPartition(TOPIC, 0)
    records = {tp: [scan_record("ut-pe100-5mhz", 1, offset=0), record(b"\xff junk", offset=1),
                    scan_record("ut-pe100-5mhz", 2, offset=2)]}
    consumer = SeekingConsumer({tp})
    await take_records(loop, consumer, Unreachable(), records)
    assert loop.positions[tp] == 1  # the good record before it was taken
    assert consumer.seeks == [(tp, 1)]  # the refused one and those after it are fetched again
    assert len(loop.learner.pending) == 1
