"""A fleet on a bucket, no shared directory: a store outage costs no request and no version, on the servers'
side (a server started during it too) and on the learner's (test_object_store_learner follows a real learner,
two servers and an operator through a 30 s outage)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
from aiokafka.structs import TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc

from weldstream.backoff import Backoff
from weldstream.codec import array_to_tensor
from weldstream.learner.checkpoint import checkpoint_path, load_checkpoint
from weldstream.learner.judging import publish_and_commit
from weldstream.learner.metrics import LearnerMetrics
from weldstream.learner.pipeline import LearnerLoop
from weldstream.model import ModelConfig, build_model
from weldstream.object_store import ObjectWeightStore
from weldstream.server.app import InferenceServer
from weldstream.server.store_health import STORE_SERVICE
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2

from .conftest import learner_config, server_config
from .test_learner_delivery import Announcements
from .test_learner_faults import TOPIC, FakeConsumer, scan_record
from .test_learner_stream import wait_for

FOLLOW_S = 60.0  # generous: a busy two-core machine loads, checks and warms 16 MB versions slowly
POLL_S = 0.3
OUTAGE_S = 10.0  # the servers' backoff has reached 8 s by then (test_object_store_learner stops it for 30 s)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def publish_next(store: ObjectWeightStore) -> int:
    version = (store.latest() or 0) + 1
    state = build_model(ModelConfig(), seed=version).state_dict()
    return store.publish(state, ModelConfig(), parent_version=version - 1, strategy="replay-gem").version


def serving(servers: list[InferenceServer], version: int) -> bool:
    return all(s.slot.current().version == version for s in servers)


def store_up(server: InferenceServer) -> float:
    return server.metrics.store_up._value.get()


async def health(server: InferenceServer, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return reply.status


class Calls:
    """A client per server calling Segment one call after another until the block ends; failures and the
    versions that answered are kept."""

    def __init__(self, servers: list[InferenceServer]) -> None:
        image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
        self.request = segmenter_pb2.SegmentRequest(scan_id="s", image=tensor_pb2.Image(tensor=array_to_tensor(image)))
        self.servers = servers
        self.failures: list[BaseException] = []
        self.seen: dict[int, set[int]] = {s.port: set() for s in servers}
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _call(self, server: InferenceServer) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = segmenter_pb2_grpc.SegmenterStub(channel)
            while not self._done.is_set():
                try:
                    self.seen[server.port].add((await stub.Segment(self.request)).model_version)
                except grpc.aio.AioRpcError as err:
                    self.failures.append(err)
                await asyncio.sleep(0.01)  # leaves the low-priority loader some of the two cores

    def answered_by(self, version: int) -> bool:
        """Whether every server has answered a call with ``version``."""
        return all(version in seen for seen in self.seen.values())

    async def follow(self, version: int, what: str) -> None:
        """Until every server serves ``version`` and has answered a call with it."""
        await wait_for(lambda: serving(self.servers, version) and self.answered_by(version), FOLLOW_S, what)

    async def __aenter__(self) -> Calls:
        self._tasks = [asyncio.create_task(self._call(server)) for server in self.servers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        await asyncio.gather(*self._tasks)


def test_backoff_doubles_up_to_its_cap_and_an_answer_resets_it():
    backoff = Backoff(first_s=1.0, cap_s=30.0)
    assert backoff.delay() == 0.0
    assert [backoff.failed() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.reset() == 7 and backoff.delay() == 0.0
    assert Backoff(failures=10_000).delay() == 30.0  # no overflow after a long outage


async def test_a_store_outage_fails_no_request_and_servers_follow_when_it_returns(seaweed_s3, s3_store_url,
                                                                                 tmp_path, started):
    publisher = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "publisher")
    await asyncio.to_thread(publish_next, publisher)
    server = await started(server_config(tmp_path / "server", store=s3_store_url, poll_interval_s=POLL_S))
    assert serving([server], 1) and store_up(server) == 1
    async with Calls([server]) as calls:
        went_down = time.monotonic()
        await asyncio.to_thread(seaweed_s3.stop)
        try:
            await wait_for(lambda: store_up(server) == 0, FOLLOW_S, "the server to notice the outage")
            # still serving the live version: only the store's own health name says it is gone
            assert (await health(server, ""), await health(server, STORE_SERVICE)) == (SERVING, NOT_SERVING)
            # a server started now serves the untrained version 0 and follows the store once it is back
            late = await started(server_config(tmp_path / "late", store=s3_store_url, poll_interval_s=POLL_S))
            assert late.slot.current().untrained and store_up(late) == 0
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - went_down)))
        finally:
            await asyncio.to_thread(seaweed_s3.start)
        await wait_for(lambda: store_up(server) == 1 and store_up(late) == 1, FOLLOW_S,
                       "both servers to find the store back")
        await wait_for(lambda: serving([server, late], 1), FOLLOW_S, "the late server to follow the store")
        two = await asyncio.to_thread(publish_next, publisher)
        await calls.follow(two, "a version published after the outage")
        await wait_for(lambda: serving([late], two), FOLLOW_S, "the late server to follow it too")
    assert not calls.failures, calls.failures[:3]
    assert calls.seen[server.port] == {1, two}  # version 1 answered all through the outage
    assert await health(server, STORE_SERVICE) == SERVING
    assert server.metrics.store_errors._value.get() >= 1 and late.metrics.store_errors._value.get() >= 1


async def test_a_publish_during_an_outage_lands_once_the_store_is_back(seaweed_s3, s3_store_url, tmp_path):
    cfg = learner_config("unused:9092", tmp_path / "learner", store=s3_store_url, holdout_share=0.5,
                         max_steps_per_scan=2)
    loop = LearnerLoop(cfg, LearnerMetrics())
    for seed in range(8):
        loop.accept(scan_record("ut-pe100-5mhz", seed, offset=seed))
    loop.record_steps(loop.learner.train_for(4, 30.0))
    consumer, producer = FakeConsumer({TopicPartition(TOPIC, 0)}), Announcements()
    publish = loop.store.publish

    def publish_into_an_outage(*args, **kwargs):
        seaweed_s3.stop()  # the store goes away after the candidate was judged, before it is written
        return publish(*args, **kwargs)

    loop.store.publish = publish_into_an_outage
    try:
        await publish_and_commit(loop, consumer, producer)
    finally:
        loop.store.publish = publish
        if not seaweed_s3.running:
            await asyncio.to_thread(seaweed_s3.start)
    assert producer.versions == [] and loop.metrics.store_errors._value.get() == 1
    # the checkpoint is local: it holds what was learned, so the offsets are committed all the same
    assert consumer.commits == [{TopicPartition(TOPIC, 0): 8}]
    assert load_checkpoint(checkpoint_path(cfg.model_dir), loop.device)["learner"]["steps"] == loop.learner.steps
    assert loop.steps_at_publish < loop.learner.steps  # the candidate is still to publish

    loop.record_steps(loop.learner.train_for(2, 30.0))  # training goes on meanwhile
    await publish_and_commit(loop, consumer, producer)
    assert producer.versions == [1] and loop.store_backoff.failures == 0
    reader = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "reader")
    assert reader.versions() == [1] and reader.manifest(1).metrics["steps"] == loop.learner.steps
    await publish_and_commit(loop, consumer, producer)  # nothing new learned: nothing published again
    assert reader.versions() == [1] and producer.versions == [1]


async def test_a_learner_started_while_the_store_is_down_waits_for_it(seaweed_s3, s3_store_url, broker, tmp_path,
                                                                      caplog):
    from weldstream.learner.loop import run

    caplog.set_level("INFO", logger="weldstream.learner.loop")
    cfg = learner_config(broker.bootstrap, tmp_path / "learner", store=s3_store_url)
    await asyncio.to_thread(seaweed_s3.stop)
    stop = asyncio.Event()
    learner = asyncio.create_task(run(cfg, stop))
    try:
        await asyncio.sleep(2.5)
        assert not learner.done()  # waiting for the store, not exited
        assert "the store is unreachable" in caplog.text and "learning from" not in caplog.text
    finally:
        await asyncio.to_thread(seaweed_s3.start)
    await wait_for(lambda: "learning from" in caplog.text, FOLLOW_S, "the learner to start once the store is back")
    stop.set()
    await asyncio.wait_for(learner, 60)
