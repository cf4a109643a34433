"""A real console for tests: uvicorn on a free loopback port in the test's event loop, accounts, and review
scans produced to (and labeled scans read back from) a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image

from weldstream.codec import array_to_tensor
from weldstream.console.app import create_app
from weldstream.console.config import ConsoleConfig, ServerConnection
from weldstream.console.services import open_services
from weldstream.dev.broker import free_port
from weldstream.topics import LABELED_SCANS, REVIEW, ensure_topics
from weldstream.v1 import segmenter_pb2, stream_pb2, tensor_pb2

PASSWORD = "correct horse battery"


def console_config(tmp_path: Path, kafka: str | None, **overrides) -> ConsoleConfig:
    base = dict(http_port=free_port(), data_dir=tmp_path / "console", model_dir=tmp_path / "models", kafka=kafka)
    base.update(overrides)
    return ConsoleConfig(**base)


def with_server(cfg: ConsoleConfig, target: str, **connection) -> ConsoleConfig:
    return replace(cfg, connection=ServerConnection(server=target, **connection))


def add_account(cfg: ConsoleConfig, name: str, role: str) -> str:
    """Create an account (password PASSWORD); returns its API token."""
    svc = open_services(cfg)
    try:
        return svc.accounts.add(name, role, PASSWORD)
    finally:
        svc.registry.close()


@contextlib.asynccontextmanager
async def running_console(cfg: ConsoleConfig) -> AsyncIterator[str]:
    """The console app served by uvicorn until the block ends; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=cfg.http_port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the console stopped before it started")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{cfg.http_port}"
    finally:
        server.should_exit = True
        await task


def client(base_url: str, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60.0)


def review_scan(scan_id: str, rig_id: str = "rig-1", size: tuple[int, int] = (48, 64), doubt: float = 0.5,
                version: int = 1, seed: int = 0) -> stream_pb2.ReviewScan:
    """A served scan as a server publishes it: a 16-bit B-scan, the server's mask (a crack), its regions."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = (rng.random(size) * 4000 + 1000).astype(np.uint16)
    mask = np.zeros(size, np.uint8)
    mask[height // 4:height // 4 + 6, width // 4:width // 4 + 10] = 1
    message = stream_pb2.ReviewScan(scan_id=scan_id, rig_id=rig_id, mask=array_to_tensor(mask),
                                    image=tensor_pb2.Image(tensor=array_to_tensor(image)),
                                    model_version=version, doubt=doubt, drift=0.1, reasons=["doubt"])
    message.captured_at.GetCurrentTime()
    message.regions.add(class_id=1, class_name="crack", area_px=60, mean_confidence=0.6, doubt=doubt,
                        bbox=segmenter_pb2.BoundingBox(x=width // 4, y=height // 4, width=10, height=6))
    return message


async def produce_reviews(bootstrap: str, scans: list[stream_pb2.ReviewScan]) -> None:
    await ensure_topics(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for scan in scans:
            await producer.send_and_wait(REVIEW, scan.SerializeToString(), key=scan.scan_id.encode())
    finally:
        await producer.stop()


async def read_labeled(bootstrap: str, at_least: int, settle_s: float = 2.0,
                       timeout_s: float = 120.0) -> list[stream_pb2.LabeledScan]:
    """Every LabeledScan on the labeled topic once ``at_least`` arrived and ``settle_s`` passed quietly."""
    consumer = AIOKafkaConsumer(LABELED_SCANS, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    found: list[stream_pb2.LabeledScan] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        quiet_since = None
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    message = stream_pb2.LabeledScan()
                    message.ParseFromString(record.value)
                    found.append(message)
            if batches:
                quiet_since = None
            elif len(found) >= at_least:
                quiet_since = quiet_since or loop.time()
                if loop.time() - quiet_since >= settle_s:
                    break
    finally:
        await consumer.stop()
    return found


def class_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.array(img)


async def wait_for_queue(http: httpx.AsyncClient, count: int, timeout_s: float = 60.0) -> list[dict]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        items = (await http.get("/api/review", params={"limit": 1000})).json()["items"]
        if len(items) >= count or loop.time() > deadline:
            return items
        await asyncio.sleep(0.2)
