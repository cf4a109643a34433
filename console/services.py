"""What every request handler of the console reaches: settings, the database's tables, Kafka, the server."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiokafka import AIOKafkaProducer

from weldstream.client import Connection
from weldstream.console.accounts import Accounts
from weldstream.console.config import ConsoleConfig
from weldstream.console.review_queue import ReviewQueue
from weldstream.console.tables import TABLES
from weldstream.limits import response_bytes
from weldstream.registry import Registry, open_registry
from weldstream.v1 import segmenter_pb2_grpc

log = logging.getLogger(__name__)


@dataclass
class Services:
    cfg: ConsoleConfig
    registry: Registry
    accounts: Accounts
    queue: ReviewQueue
    producer: AIOKafkaProducer | None = None
    channel: grpc.aio.Channel | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # one entry per room that keeps state (jobs, rigs)

    @property
    def connection(self) -> Connection:
        c = self.cfg.connection
        return Connection(c.server, c.tls_ca, c.tls_cert, c.tls_key, c.auth_token_file)

    def segmenter(self) -> segmenter_pb2_grpc.SegmenterStub:
        if self.channel is None:
            self.channel = self.connection.aio_channel([("grpc.max_receive_message_length", response_bytes()),
                                                        ("grpc.max_send_message_length", response_bytes())])
        return segmenter_pb2_grpc.SegmenterStub(self.channel)

    def record_action(self, action: str, actor: str, reason: str, version: int | None = None,
                      previous: int | None = None) -> None:
        """Every change a person makes through the console goes to the registry's operator actions."""
        self.registry.record_action(action, version, previous, f"console:{actor}", reason)


def open_services(cfg: ConsoleConfig) -> Services:
    """The database (the registry's, so the queue survives a restart and is shared with the history)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    registry = open_registry(cfg.registry, cfg.model_dir)
    registry.ensure_tables(TABLES)
    queue = ReviewQueue(registry, cfg.data_dir / "review")
    recovered = queue.recover()
    if recovered:
        log.warning("%d review items were being submitted when the console stopped; they are queued again",
                    recovered)
    return Services(cfg, registry, Accounts(registry), queue)
