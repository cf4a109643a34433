"""`weldstream import DIR`: a folder of labeled scans onto the labeled topic, each pair checked first.

Pairs that fail a check are skipped and reported with the reason (the learner's own decoder is the
check, see ``scan_folder.read_pair``); the rest are produced at the chosen rate, keyed by scan id. With
``--to s3://bucket/datasets/NAME`` the good pairs are kept as a dataset in the bucket instead
(``weldstream.datasets``), which ``consolidate --data`` and ``bench cl --data`` read back; DIR may itself
be such a dataset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer

from weldstream.codec import tensor_to_array
from weldstream.datasets import DatasetWriter, is_remote, local_folder
from weldstream.errors import InvalidInput
from weldstream.kafka_security import KafkaSecurity
from weldstream.learner.scan_folder import FolderOptions, Pair, find_pairs, read_pair
from weldstream.pacing import keep_pace
from weldstream.settings import optional_text, setting
from weldstream.topics import DEFAULT_KAFKA, LABELED_SCANS, ensure_topics

log = logging.getLogger(__name__)


def parse_series(text: str) -> dict[str, str]:
    """'W0001=W0002,W0003=W0004' -> {'W0001': 'W0002', ...}."""
    pairs = [part.strip().split("=") for part in text.split(",") if part.strip()]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"mask series must look like W0001=W0002[,W0003=W0004], got {text!r}")
    return dict(pairs)


@dataclass(frozen=True)
class ImportConfig:
    kafka: str = setting(DEFAULT_KAFKA, help="Kafka bootstrap HOST:PORT")
    topic: str = LABELED_SCANS
    rate: float = setting(10.0, help="scans per second (0: as fast as the broker takes them)")
    domain: str = setting("", help="domain of the pairs whose layout names none (no CSV column, no folder)")
    rig_id: str = setting("import", help="rig id for pairs whose index names none")
    binary_class: int = setting(0, help="class of a binary (defect / no defect) mask's defect pixels, e.g. 1 for "
                                        "crack (0: skip binary masks)")
    mask_series: dict[str, str] = setting(default_factory=dict, parse=parse_series,
                                          help="GDXray-style series whose masks are another series: W0001=W0002,...")
    dry_run: bool = setting(False, help="check every pair and report; send nothing")
    report: str | None = setting("", parse=optional_text, help="also write the report (JSON) to this file")
    to: str | None = setting("", parse=optional_text,
                             help="keep the checked pairs as a dataset in an S3-compatible bucket "
                                  "(s3://bucket/datasets/NAME; AWS_* variables) instead of sending them to Kafka")
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError("rate must be >= 0")
        if self.to and not is_remote(self.to):
            raise ValueError(f"--to takes an s3://bucket/prefix URL, got {self.to!r}")


@dataclass
class ImportReport:
    sent: int = 0
    per_domain: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image path, why)

    def summary(self, verb: str = "sent") -> str:
        domains = ", ".join(f"{d}: {n}" for d, n in sorted(self.per_domain.items())) or "none"
        lines = [f"{verb} {self.sent} labeled scans ({domains}); skipped {len(self.skipped)}"]
        lines += [f"  skipped {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"sent": self.sent, "per_domain": dict(self.per_domain),
                           "skipped": [{"image": p, "reason": r} for p, r in self.skipped]}, indent=1)


async def import_folder(root: Path, cfg: ImportConfig, options: FolderOptions | None = None) -> ImportReport:
    """Check every pair under ``root`` (a folder, or a dataset in a bucket) and produce the good ones to
    ``cfg.topic``, or keep them in the dataset ``cfg.to``; returns the report."""
    root = await asyncio.to_thread(local_folder, root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    options = options or FolderOptions(cfg.domain, cfg.rig_id, cfg.binary_class, cfg.mask_series)
    pairs: list[Pair] = await asyncio.to_thread(lambda: list(find_pairs(root, options)))
    report = ImportReport()
    producer = None
    dataset = DatasetWriter(cfg.to) if cfg.to and not cfg.dry_run else None
    if not cfg.dry_run and dataset is None:
        await ensure_topics(cfg.kafka, security=cfg.kafka_security)
        producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka, **cfg.kafka_security.client_kwargs(),
                                    acks="all", enable_idempotence=False,
                                    linger_ms=5, max_request_size=64 << 20)
        await producer.start()
    seen: dict[str, Path] = {}
    started = time.monotonic()
    try:
        for pair in pairs:
            if pair.scan_id in seen:
                taken = f"scan id {pair.scan_id!r} is already taken by {seen[pair.scan_id]}"
                report.skipped.append((str(pair.image), taken))
                continue
            try:
                message, _ = await asyncio.to_thread(read_pair, pair, options)
            except InvalidInput as exc:
                report.skipped.append((str(pair.image), str(exc)))
                continue
            seen[pair.scan_id] = pair.image
            if dataset is not None:
                await asyncio.to_thread(dataset.add, pair.scan_id, pair.domain, message.rig_id,
                                        message.image.encoded.data, pair.image.suffix.lower(),
                                        tensor_to_array(message.mask, "mask"))
            if producer is not None:
                await producer.send(cfg.topic, message.SerializeToString(), key=pair.scan_id.encode())
            report.sent += 1
            report.per_domain[pair.domain] += 1
            if producer is not None:
                await keep_pace(started, report.sent, cfg.rate)
        if producer is not None:
            await producer.flush()
        if dataset is not None:
            await asyncio.to_thread(dataset.close)
    finally:
        if producer is not None:
            await producer.stop()
    log.info("import of %s: %d %s, %d skipped in %.1f s", root, report.sent, "good" if cfg.dry_run else "sent",
             len(report.skipped), time.monotonic() - started)
    if cfg.report:
        Path(cfg.report).write_text(report.to_json() + "\n")
    return report
