"""Security an operator can switch on: gRPC TLS and mutual TLS, bearer tokens (health exempt), Kafka TLS
and SASL options reaching aiokafka, signed model versions."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from weldstream.cli import build_parser, learner_config
from weldstream.client import Connection, infer_file
from weldstream.codec import array_to_tensor, encode_png
from weldstream.kafka_security import KafkaSecurity
from weldstream.learner import kafka_io
from weldstream.model import ModelConfig, build_model
from weldstream.settings import apply_environment
from weldstream.v1 import segmenter_pb2, segmenter_pb2_grpc, tensor_pb2
from weldstream.weight_store import MANIFEST_FILE, WeightStore

from .certs import make_pki
from .conftest import learner_config as base_learner_config
from .conftest import server_config

TOKEN = "s3cr3t-token-for-rig-7"
CLIENT = Path(__file__).parent / "clients" / "triton_secure_client.py"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def request() -> segmenter_pb2.SegmentRequest:
    return segmenter_pb2.SegmentRequest(scan_id="s", image=tensor_pb2.Image(tensor=array_to_tensor(
        np.zeros((64, 64), np.uint8))))


def tls_channel(port: int, pki, cert: str | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca.crt"].read_bytes(),
        private_key=pki[f"{cert}.key"].read_bytes() if cert else None,
        certificate_chain=pki[f"{cert}.crt"].read_bytes() if cert else None)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


async def segment_code(channel: grpc.aio.Channel, metadata=None) -> grpc.StatusCode:
    try:
        await segmenter_pb2_grpc.SegmenterStub(channel).Segment(request(), metadata=metadata, timeout=10)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        return err.code()


async def triton(port: int, pki, token: str | None = None) -> dict:
    args = [sys.executable, str(CLIENT), f"localhost:{port}", str(pki["ca.crt"]), *([token] if token else [])]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_tls_with_a_token_serves_tritonclient_and_refuses_the_rest(tmp_path, pki, started):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotated monthly\nold-token\n{TOKEN}\n")
    server = await started(server_config(tmp_path / "models", tls_cert=pki["server.crt"], tls_key=pki["server.key"],
                                         auth_token_file=token_file))
    accepted, refused = await asyncio.gather(triton(server.port, pki, TOKEN), triton(server.port, pki))
    assert accepted == {"live": True, "mask_shape": [1, 64, 64]}
    assert refused == {"error": "StatusCode.UNAUTHENTICATED"}
    async with tls_channel(server.port, pki) as channel:
        assert await segment_code(channel) == grpc.StatusCode.UNAUTHENTICATED
        assert await segment_code(channel, [("authorization", "Bearer wrong")]) == grpc.StatusCode.UNAUTHENTICATED
        assert await segment_code(channel, [("authorization", f"Bearer {TOKEN}")]) == grpc.StatusCode.OK
        assert await segment_code(channel, [("authorization", "Bearer old-token")]) == grpc.StatusCode.OK
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # exempt: probes carry no secret
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plaintext:
        assert await segment_code(plaintext, [("authorization", f"Bearer {TOKEN}")]) == grpc.StatusCode.UNAVAILABLE
    assert server.metrics.requests.labels("Segment", "UNAUTHENTICATED")._value.get() >= 2


async def test_mutual_tls_needs_a_certificate_the_client_ca_signed(tmp_path, pki, started):
    server = await started(server_config(tmp_path / "models", tls_cert=pki["server.crt"], tls_key=pki["server.key"],
                                         tls_client_ca=pki["ca.crt"]))
    async with tls_channel(server.port, pki, "client") as channel:
        assert await segment_code(channel) == grpc.StatusCode.OK
    async with tls_channel(server.port, pki) as channel:
        assert await segment_code(channel) == grpc.StatusCode.UNAVAILABLE
    async with tls_channel(server.port, pki, "stranger") as channel:
        assert await segment_code(channel) == grpc.StatusCode.UNAVAILABLE


async def test_weldstream_infer_speaks_tls_and_sends_the_token(tmp_path, pki, started, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = await started(server_config(tmp_path / "models", tls_cert=pki["server.crt"], tls_key=pki["server.key"],
                                         tls_client_ca=pki["ca.crt"], auth_token_file=token_file))
    image = tmp_path / "scan.png"
    image.write_bytes(encode_png(np.zeros((64, 64), np.uint8)))
    target = f"localhost:{server.port}"
    full = Connection(target, pki["ca.crt"], pki["client.crt"], pki["client.key"], token_file)
    assert await asyncio.to_thread(infer_file, image, full, None, 10.0) == 0
    no_token = Connection(target, pki["ca.crt"], pki["client.crt"], pki["client.key"])
    assert await asyncio.to_thread(infer_file, image, no_token, None, 10.0) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().out


async def test_kafka_tls_and_sasl_options_reach_every_aiokafka_client(tmp_path, pki, caplog, monkeypatch):
    password_file = tmp_path / "kafka-password"
    password_file.write_text("hunter2-but-longer\n")
    argv = ["learn", "--kafka", "broker:9093", "--model-dir", str(tmp_path / "models"),
            "--kafka-security-protocol", "SASL_SSL", "--kafka-ssl-cafile", str(pki["ca.crt"]),
            "--kafka-sasl-username", "learner", "--kafka-sasl-password-file", str(password_file)]
    parser = build_parser(argv)
    apply_environment(parser, {"WELDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    security = learner_config(parser.parse_args(argv)).kafka_security
    assert security.sasl_mechanism == "SCRAM-SHA-512" and "hunter2" not in repr(security)

    caplog.set_level(logging.DEBUG)
    cfg = base_learner_config("broker:9093", tmp_path / "models", kafka_security=security)
    consumer = kafka_io.open_consumer(cfg, {})
    producer = kafka_io.open_producer(cfg)
    for client in (consumer._client, producer.client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "learner"
        assert client._sasl_plain_password == "hunter2-but-longer"
        assert isinstance(client._ssl_context, ssl.SSLContext)
        assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED

    from weldstream import announcements, topics

    built: list[dict] = []

    class Recorder:
        def __init__(self, *args, **kwargs) -> None:
            built.append(kwargs)
            raise asyncio.CancelledError  # stop right after construction

    monkeypatch.setattr(topics, "AIOKafkaAdminClient", Recorder)
    monkeypatch.setattr(announcements, "AIOKafkaConsumer", Recorder)
    for make in (topics.ensure_topics("broker:9093", security=security),
                 announcements.follow_announcements("broker:9093", "weld.models", print, security)):
        with pytest.raises(asyncio.CancelledError):
            await make
    assert [kw["security_protocol"] for kw in built] == ["SASL_SSL", "SASL_SSL"]
    assert all(kw["sasl_mechanism"] == "SCRAM-SHA-512" for kw in built)
    assert "hunter2" not in caplog.text
    await producer.stop()


def test_import_consolidate_and_models_commands_take_kafka_tls_and_sasl_options(tmp_path, pki, caplog, monkeypatch):
    from weldstream import announcements
    from weldstream.learner import corpus, importer

    password_file = tmp_path / "kafka-password"
    password_file.write_text("hunter2-but-longer\n")
    secured = ["--kafka", "broker:9093", "--kafka-security-protocol", "SASL_SSL", "--kafka-ssl-cafile",
               str(pki["ca.crt"]), "--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "ops",
               "--kafka-sasl-password-file", str(password_file)]
    model_dir = tmp_path / "models"
    WeightStore(model_dir).publish(build_model(ModelConfig(), seed=1).state_dict(), ModelConfig(), parent_version=0)
    (tmp_path / "scans").mkdir()
    built: dict[str, dict] = {}

    def recorder(name: str) -> type:
        class Recorder:
            def __init__(self, *args, **kwargs) -> None:
                built[name] = kwargs
                raise asyncio.CancelledError  # stop right after construction
        return Recorder

    async def no_topics(bootstrap: str, *args, security: KafkaSecurity | None = None, **kwargs) -> None:
        built["import ensure_topics"] = (security or KafkaSecurity()).client_kwargs()

    monkeypatch.setattr(importer, "ensure_topics", no_topics)
    monkeypatch.setattr(importer, "AIOKafkaProducer", recorder("import producer"))
    monkeypatch.setattr(corpus, "AIOKafkaConsumer", recorder("consolidate corpus reader"))
    monkeypatch.setattr(announcements, "AIOKafkaProducer", recorder("models announcement"))
    caplog.set_level(logging.DEBUG)

    for argv in (["import", str(tmp_path / "scans"), "--rate", "0", *secured],
                 ["consolidate", "--model-dir", str(model_dir), "--no-progress", "--threads", "1", *secured],
                 ["models", "--model-dir", str(model_dir), *secured, "pin", "1"]):
        args = build_parser(argv).parse_args(argv)
        assert args.security_protocol == "SASL_SSL"
        with pytest.raises(asyncio.CancelledError):
            args.run(args)

    assert set(built) == {"import ensure_topics", "import producer", "consolidate corpus reader",
                          "models announcement"}
    for name, kwargs in built.items():
        assert kwargs["security_protocol"] == "SASL_SSL", name
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256", name
        assert kwargs["sasl_plain_username"] == "ops", name
        assert isinstance(kwargs["ssl_context"], ssl.SSLContext), name
    assert "hunter2" not in caplog.text

def test_kafka_security_settings_are_checked():
    with pytest.raises(ValueError, match="password-file"):
        KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_username="u")
    with pytest.raises(ValueError):
        KafkaSecurity(sasl_mechanism="GSSAPI")
    assert KafkaSecurity().client_kwargs() == {}


async def test_signed_versions_are_served_and_unsigned_or_wrongly_signed_ones_refused(tmp_path, started):
    key_file = tmp_path / "signing.key"
    key_file.write_bytes(b"0123456789abcdef-weld-signing-key")
    model_dir = tmp_path / "models"
    signer = WeightStore(model_dir, signing_key=key_file.read_bytes())
    unsigned, stranger = WeightStore(model_dir), WeightStore(model_dir, signing_key=b"another key of 32 bytes length!")

    def publish(store: WeightStore, seed: int) -> int:
        return store.publish(build_model(ModelConfig(), seed=seed).state_dict(), ModelConfig(),
                             parent_version=store.latest() or 0).version

    publish(signer, 1)
    server = await started(server_config(model_dir, signing_key_file=key_file, poll_interval_s=60))
    assert server.slot.current().version == 1
    for store in (unsigned, stranger):
        publish(store, 2)
        assert not await server.swapper.swap_to_served()
    tampered = publish(signer, 4)
    manifest = signer.path_of(tampered) / MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"parent_version": 3', '"parent_version": 1'))
    assert not await server.swapper.swap_to_served()
    assert server.slot.current().version == 1
    assert server.metrics.swaps.labels("failed")._value.get() == 3
    publish(signer, 5)
    assert await server.swapper.swap_to_served() and server.slot.current().version == 5
