"""Shared fixtures: a real gRPC server on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from weldstream.server.app import InferenceServer
from weldstream.server.config import ServerConfig

torch.set_num_threads(2)


def server_config(model_dir: Path, **overrides) -> ServerConfig:
    base = dict(model_dir=model_dir, host="127.0.0.1", grpc_port=0, metrics_port=0, grace_s=5.0,
                poll_interval_s=0.2)
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
