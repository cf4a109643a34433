"""The command line as a person uses it: simulate a dataset, serve, infer one file with an overlay."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
from PIL import Image

from weldstream.dev.broker import free_port
from weldstream.dev.stack import Service, wait_ready


def weldstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weldstream.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_simulate_then_infer_with_overlay(tmp_path):
    data = tmp_path / "data"
    result = weldstream("simulate", "--out", str(data), "--domain", "xray-film-steel-x52", "--count", "3",
                        "--size", "96x160")
    assert result.returncode == 0, result.stderr
    with open(data / "index.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    image_path = data / rows[0]["image"]

    port = free_port()
    server = Service("server", ["serve", "--model-dir", str(tmp_path / "models"), "--host", "127.0.0.1",
                                "--grpc-port", str(port), "--metrics-port", "-1"], tmp_path / "server.log").start()
    try:
        wait_ready(server, "127.0.0.1", port)
        overlay = tmp_path / "overlay.png"
        result = weldstream("infer", str(image_path), "--target", f"127.0.0.1:{port}", "--out", str(overlay))
    finally:
        assert server.stop() == 0, (tmp_path / "server.log").read_text()[-2000:]
    assert result.returncode == 0, result.stderr
    assert "model v0" in result.stdout and "defect pixels:" in result.stdout
    picture = np.asarray(Image.open(overlay))
    assert picture.shape == (96, 160, 3)


def test_infer_reports_a_bad_file_clearly(tmp_path):
    bogus = tmp_path / "scan.png"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    port = free_port()
    server = Service("server", ["serve", "--model-dir", str(tmp_path / "models"), "--host", "127.0.0.1",
                                "--grpc-port", str(port), "--metrics-port", "-1"], tmp_path / "server.log").start()
    try:
        wait_ready(server, "127.0.0.1", port)
        result = weldstream("infer", str(bogus), "--target", f"127.0.0.1:{port}")
    finally:
        server.stop()
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stdout and "image.encoded.data" in result.stdout


def test_help_lists_every_command():
    result = weldstream("--help")
    for command in ("serve", "infer", "simulate", "broker", "learn", "demo", "bench"):
        assert command in result.stdout


def test_simulate_streams_labeled_scans_to_kafka(broker):
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from weldstream.topics import LABELED_SCANS
    from weldstream.v1 import stream_pb2

    result = weldstream("simulate", "--kafka", broker.bootstrap, "--schedule", "gradual", "--domain", "all",
                        "--count", "4", "--rate", "0", "--size", "64x64")
    assert result.returncode == 0, result.stderr
    assert "produced 24 labeled scans" in result.stdout

    async def read_all() -> list[stream_pb2.LabeledScan]:
        consumer = AIOKafkaConsumer(LABELED_SCANS, bootstrap_servers=broker.bootstrap, group_id=None,
                                    auto_offset_reset="earliest")
        await consumer.start()
        messages = []
        try:
            for _ in range(20):
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    messages += [stream_pb2.LabeledScan.FromString(m.value) for m in batch]
                if len(messages) >= 24:
                    break
        finally:
            await consumer.stop()
        return messages

    messages = asyncio.run(read_all())
    assert len(messages) == 24
    assert len({m.scan_id for m in messages}) == 24
    assert len({m.domain for m in messages}) == 6
    assert all(m.mask.shape == [64, 64] and m.rig_id == "sim-rig-1" for m in messages)


def test_broker_command_stops_cleanly_on_sigterm():
    import signal
    import time

    from weldstream.dev.broker import wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "weldstream.cli", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port("127.0.0.1", port, 30)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
