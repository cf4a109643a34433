"""Between training chunks: checkpoint, judge a candidate, announce it if published, commit the offsets.

Delivery: offsets are committed only after a checkpoint holding everything learned from (or still
pending for) those messages is on disk, so a crash at any point re-reads, and never skips, a scan. The
checkpoint is local, so a weight store that does not answer stops only publishing: what was learned is
in the checkpoint and in the next candidate, which is judged and published once the store answers.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError

from weldstream.announcements import announce
from weldstream.learner.pipeline import LearnerLoop
from weldstream.learner.publisher import Decision
from weldstream.registry import Round, best_effort
from weldstream.weight_store import Manifest

log = logging.getLogger(__name__)


async def publish_and_commit(loop: LearnerLoop, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
    """Checkpoint, then judge a candidate and announce it if published, then commit the checkpointed offsets.

    The checkpoint comes first so that a published version's training state (the parent of the next
    version) is always on disk, whatever moment a crash picks.
    """
    started = time.monotonic()
    try:
        await _checkpoint_judge_commit(loop, consumer, producer)
    finally:
        loop.judging_s = time.monotonic() - started
        loop.metrics.judging_seconds.observe(loop.judging_s)


async def _checkpoint_judge_commit(loop: LearnerLoop, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
    try:
        await loop.checkpoint()
    except OSError as exc:
        # Without a checkpoint nothing may be committed or published; training goes on in memory and the
        # next checkpoint (once there is space) covers everything.
        loop.metrics.checkpoint_failures.inc()
        loop.last_publish = time.monotonic()  # try again after --publish-every-s, not at every poll
        log.error("could not write the checkpoint (%s); committing and publishing nothing until one is written",
                  exc)
        return
    try:
        manifest = await publish(loop)
    except OSError as exc:  # StoreUnavailable, a full disk under a directory store: the next judgement tries again
        loop.last_publish = time.monotonic()
        loop.store_failed(exc)
        manifest = None
    else:
        loop.store_answered()
    if manifest is not None:
        try:
            await announce(producer, loop.cfg.models_topic, manifest)
        except KafkaError as exc:  # the version is in the store; servers find it at their next poll
            log.warning("could not announce version %d (%s); servers will find it by polling the store",
                        manifest.version, exc)
    owned = consumer.assignment()
    offsets = {tp: o for tp, o in loop.checkpointed.items() if tp in owned and loop.committed.get(tp) != o}
    if not offsets:
        return
    try:
        await consumer.commit(offsets)
        loop.committed.update(offsets)
    except (CommitFailedError, KafkaError) as exc:
        # The checkpoint already holds these scans; a restart seeks past them (SeekToCheckpoint).
        log.warning("offset commit failed (%s); will retry at the next checkpoint", exc)


async def follow_store(loop: LearnerLoop) -> None:
    """Look at the store now (an announcement came): adopt a consolidation, follow a pin; a store that does not
    answer is counted and looked at again at the next judgement."""
    try:
        await asyncio.to_thread(loop.sync_with_store)
    except OSError as exc:
        loop.store_failed(exc)


async def publish(loop: LearnerLoop) -> Manifest | None:
    """Validate, then publish or refuse: the newly published version's manifest, or None (nothing new to
    judge, or refused). The caller announces, checkpoints and commits."""
    manifest = None
    await asyncio.to_thread(loop.sync_with_store)
    if loop.learner.steps > loop.steps_at_publish and loop.validation.domains():
        offsets = [{"topic": tp.topic, "partition": tp.partition, "offset": o}
                   for tp, o in sorted(loop.positions.items())]
        decision = await asyncio.to_thread(_judge, loop, offsets)
        _record(loop, decision)
        manifest = decision.manifest
        loop.steps_at_publish = loop.learner.steps
    loop.last_publish = time.monotonic()
    return manifest


def _judge(loop: LearnerLoop, offsets: list[dict[str, int | str]]) -> Decision:
    """In a worker thread: judge (and maybe publish), and record the round."""
    decision = loop.publisher.consider(loop.learner, loop.validation, offsets, version=loop.store_seen + 1)
    now = time.time()
    version = decision.manifest.version if decision.manifest else None
    if decision.manifest is not None:
        best_effort(loop.registry, "record_version", decision.manifest)
    best_effort(loop.registry, "record_round", Round(
        "learner", loop.cfg.step.strategy, loop.round_started, now - loop.round_started,
        scans=loop.learner.scans_learned - loop.scans_at_round, steps=loop.learner.steps - loop.steps_at_round,
        compared_with=decision.compared_with, outcome="promoted" if decision.promoted else "refused",
        version=version, reason=decision.reason, offsets=offsets,
        scores={d: {"miou": s.miou, "dice": s.dice, "samples": s.samples} for d, s in decision.scores.items()}))
    loop.round_started = now
    loop.scans_at_round, loop.steps_at_round = loop.learner.scans_learned, loop.learner.steps
    return decision


def _record(loop: LearnerLoop, decision: Decision) -> None:
    loop.metrics.versions.labels("published" if decision.promoted else "refused").inc()
    for domain, score in decision.scores.items():
        loop.metrics.validation_miou.labels(domain).set(score.miou)
        loop.metrics.validation_dice.labels(domain).set(score.dice)
    loop.metrics.live_version.set(loop.publisher.live_version)
