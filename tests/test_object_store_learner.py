"""A real learner and two servers on a bucket with no shared directory: under load the servers follow every
version the learner publishes without a failed request; the store stopped for 30 s stops neither serving nor
learning, and the learner's versions arrive afterwards in order, none twice; pin, rollback and unpin follow."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from weldstream.dev.rig import Schedule, produce_stream
from weldstream.learner.loop import run
from weldstream.object_store import ObjectWeightStore
from weldstream.stores import CACHE_DIR
from weldstream.topics import MODELS
from weldstream.v1 import stream_pb2

from .conftest import learner_config, server_config
from .test_cli import weldstream
from .test_learner_stream import wait_for
from .test_object_store_fleet import FOLLOW_S, POLL_S, Calls, serving, store_up

OUTAGE_S = 30.0
LEARN_S = 300.0  # a busy two-core machine trains, validates and uploads 16 MB versions slowly
DOMAINS = ("ut-pe100-5mhz", "xray-film-steel-x52")


async def announced(bootstrap: str) -> list[int]:
    """Every version announced on weld.models, in the order the topic holds them."""
    consumer = AIOKafkaConsumer(MODELS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        versions = [stream_pb2.ModelAnnouncement.FromString(r.value) for rs in batches.values() for r in rs]
        return [a.version for a in versions if a.action in ("", "publish")]
    finally:
        await consumer.stop()


async def test_a_learner_and_two_servers_share_nothing_but_the_bucket(seaweed_s3, s3_store_url, broker, tmp_path,
                                                                      started):
    servers = [await started(server_config(tmp_path / f"server-{i}", store=s3_store_url, kafka=broker.bootstrap,
                                           poll_interval_s=POLL_S)) for i in range(2)]
    cfg = learner_config(broker.bootstrap, tmp_path / "learner", store=s3_store_url, publish_every_steps=4,
                         publish_every_s=3.0)
    reader = ObjectWeightStore(s3_store_url, cache_dir=tmp_path / "reader")
    stop = asyncio.Event()
    learner = asyncio.create_task(run(cfg, stop))
    schedule = Schedule.parse(",".join(f"{d}:400" for d in DOMAINS))
    rig = asyncio.create_task(produce_stream(broker.bootstrap, schedule, rate=6, size=(64, 64), seed=3, stop=stop))
    try:
        async with Calls(servers) as calls:
            await wait_for(lambda: (reader.latest() or 0) >= 2, LEARN_S, "the learner to publish two versions")
            await calls.follow(reader.latest(), "both servers to follow the learner")

            before = reader.latest()
            await asyncio.to_thread(seaweed_s3.stop)
            went_down = time.monotonic()
            # what each serves as the store goes (a version published just before may already be live)
            held = [s.slot.current().version for s in servers]
            try:
                await wait_for(lambda: all(store_up(s) == 0 for s in servers), FOLLOW_S, "servers to see the outage")
                await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - went_down)))
                assert [s.slot.current().version for s in servers] == held  # still serving what they had
                assert min(held) >= before
            finally:
                await asyncio.to_thread(seaweed_s3.start)
            await wait_for(lambda: (reader.latest() or 0) > before, LEARN_S,
                           "the learner to publish again once the store is back")
            newest = reader.latest()
            await calls.follow(newest, "both servers to follow a version published after the outage")

            pinned = await asyncio.to_thread(weldstream, "models", "pin", str(before), "--store", s3_store_url,
                                             "--model-dir", str(tmp_path / "operator"), "--kafka", broker.bootstrap)
            assert pinned.returncode == 0, pinned.stderr[-2000:]
            await calls.follow(before, "both servers to follow the pin")
            rolled = await asyncio.to_thread(weldstream, "models", "rollback", "--store", s3_store_url,
                                             "--model-dir", str(tmp_path / "operator"), "--kafka", broker.bootstrap)
            assert rolled.returncode == 0, rolled.stderr[-2000:]
            await calls.follow(before - 1, "both servers to follow the rollback to the pin's parent")
            assert (await asyncio.to_thread(weldstream, "models", "unpin", "--store", s3_store_url, "--model-dir",
                                            str(tmp_path / "operator"), "--kafka", broker.bootstrap)).returncode == 0
            await wait_for(lambda: serving(servers, reader.latest()), FOLLOW_S, "servers to follow the unpin")
    finally:
        stop.set()
        await asyncio.gather(rig, return_exceptions=True)
        await asyncio.wait_for(learner, 120)
    assert not calls.failures, calls.failures[:3]
    published = reader.versions()
    assert published == list(range(1, len(published) + 1))  # in order, no number skipped or taken twice
    news = await announced(broker.bootstrap)
    assert news == sorted(set(news)) and set(news) <= set(published) and newest in news  # in order, none twice
    for version in published[1:]:
        assert reader.manifest(version).parent_version == version - 1  # each learned on top of the one before
    for server in servers:  # no shared directory: each holds only its own cache of the versions it loaded
        local = Path(server.cfg.model_dir)
        assert not (local / "versions").exists() and any((local / CACHE_DIR).iterdir())
        assert server.metrics.store_errors._value.get() >= 1
