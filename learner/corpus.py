"""Everything labeled so far, for an offline pass: the labeled topic replayed from its beginning up to
where it ended when the job started (or a folder of scans), decoded once and split as the learner splits
it: the same scans are held out for validation (by scan id), so scores stay comparable."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from weldstream.errors import InvalidInput
from weldstream.kafka_security import KafkaSecurity
from weldstream.learner.holdout import ValidationSets, is_held_out
from weldstream.learner.records import LabeledSample, decode_record
from weldstream.learner.scan_folder import FolderOptions, find_pairs, read_pair
from weldstream.model import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    train: dict[str, list[LabeledSample]] = field(default_factory=dict)  # domain -> scans, in arrival order
    validation: ValidationSets = field(default_factory=lambda: ValidationSets(48))
    offsets: list[dict[str, int | str]] = field(default_factory=list)  # where the replay stopped, per partition
    invalid: int = 0  # records or pairs the learner's decoder refuses (already dead-lettered or reported)
    newest_label_at: float = 0.0
    _ids: list[str] = field(default_factory=list)

    def add(self, sample: LabeledSample, holdout_share: float) -> None:
        self._ids.append(sample.scan_id)
        self.newest_label_at = max(self.newest_label_at, sample.labeled_at)
        if is_held_out(sample.scan_id, holdout_share):
            self.validation.add(sample.scan_id, sample.domain, sample.x, sample.y)
        else:
            self.train.setdefault(sample.domain, []).append(sample)

    def only(self, domains: Iterable[str]) -> Corpus:
        """The corpus restricted to ``domains``, in that order (an unknown domain is an error)."""
        wanted = list(domains)
        missing = [d for d in wanted if d not in self.train]
        if missing:
            raise ValueError(f"no labeled training scans of {missing}; have {list(self.train)}")
        self.train = {d: self.train[d] for d in wanted}
        return self

    def fingerprint(self) -> str:
        """Names exactly these scans, in any order: a resumed job must see the same data."""
        return hashlib.sha256("\n".join(sorted(self._ids)).encode()).hexdigest()[:16]

    def in_label_order(self) -> Corpus:
        """Domains in the order their first scan was labeled, each domain's scans likewise (scan id breaks
        ties): the same order however the topic's partitions were interleaved when it was read."""
        for samples in self.train.values():
            samples.sort(key=lambda s: (s.labeled_at, s.scan_id))
        self.train = dict(sorted(self.train.items(), key=lambda item: (item[1][0].labeled_at, item[0])))
        return self

    def scans(self) -> int:
        return sum(len(s) for s in self.train.values())


async def read_labeled_topic(bootstrap: str, topic: str, model: ModelConfig, holdout_share: float,
                             max_side: int = 4096, until: dict[int, int] | None = None,
                             validation_per_domain: int = 48, security: KafkaSecurity | None = None) -> Corpus:
    """Every record of ``topic`` from offset 0 up to its end now (or up to ``until``, per partition)."""
    corpus = Corpus(validation=ValidationSets(validation_per_domain, 128 << 20))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(security or KafkaSecurity()).client_kwargs(),
                                group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=64 << 20,
                                fetch_max_bytes=128 << 20)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            raise ValueError(f"topic {topic} does not exist on {bootstrap}")
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = until or {tp.partition: o for tp, o in (await consumer.end_offsets(partitions)).items()}
        remaining = {tp for tp in partitions if ends.get(tp.partition, 0) > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=256)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp.partition]:
                        break
                    try:
                        sample = await asyncio.to_thread(decode_record, record.value, len(model.classes),
                                                         model.in_channels, max_side)
                    except InvalidInput:
                        corpus.invalid += 1
                        continue
                    corpus.add(sample, holdout_share)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp.partition]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    corpus.in_label_order()
    corpus.offsets = [{"topic": topic, "partition": p, "offset": o} for p, o in sorted(ends.items())]
    log.info("replayed %s up to %s: %d training scans in %d domains, %d held out, %d invalid", topic, ends,
             corpus.scans(), len(corpus.train), sum(corpus.validation.size(d) for d in corpus.validation.domains()),
             corpus.invalid)
    return corpus


def read_folder(root: Path, model: ModelConfig, holdout_share: float, max_side: int = 4096,
                validation_per_domain: int = 48) -> Corpus:
    """Every good pair of a folder (see ``scan_folder``); refused pairs are counted, not fatal."""
    corpus = Corpus(validation=ValidationSets(validation_per_domain, 128 << 20))
    options = FolderOptions(model=model, max_side=max_side)
    for pair in find_pairs(Path(root), options):
        try:
            _, sample = read_pair(pair, options)
        except InvalidInput as exc:
            log.warning("skipping %s: %s", pair.image, exc)
            corpus.invalid += 1
            continue
        corpus.add(sample, holdout_share)
    return corpus

