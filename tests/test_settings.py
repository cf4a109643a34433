"""Settings: every flag reads the WELDSTREAM_* variable named after it, and a flag wins over its variable."""

from __future__ import annotations

import argparse
import subprocess
import sys
import urllib.request

import pytest

from weldstream.cli import BENCHMARKS, COMMANDS, build_parser, learner_config
from weldstream.dev.broker import free_port
from weldstream.dev.stack import Service, wait_ready
from weldstream.settings import apply_environment, env_name


def parse(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    parser = build_parser(argv)
    apply_environment(parser, environ)
    return parser.parse_args(argv)


def test_env_names_follow_the_flag():
    assert env_name("--grpc-port") == "WELDSTREAM_GRPC_PORT"
    assert env_name("--kafka") == "WELDSTREAM_KAFKA"


def test_a_variable_sets_a_setting_and_a_flag_wins_over_it():
    environ = {"WELDSTREAM_GRPC_PORT": "9123", "WELDSTREAM_KAFKA": "kafka-0.plant:9093"}
    args = parse(["serve"], environ)
    assert (args.grpc_port, args.kafka) == (9123, "kafka-0.plant:9093")
    args = parse(["serve", "--grpc-port", "7000"], environ)
    assert args.grpc_port == 7000


def test_variables_go_through_the_flags_own_parsing():
    args = parse(["learn"], {"WELDSTREAM_CROP_SIZE": "96", "WELDSTREAM_LR": "0.01",
                             "WELDSTREAM_STRATEGY": "naive", "WELDSTREAM_KAFKA": "broker:9092"})
    cfg = learner_config(args)
    assert cfg.crop_size == 96 and cfg.learning_rate == 0.01
    assert cfg.step.strategy == "naive" and cfg.kafka == "broker:9092"
    assert parse(["serve"], {"WELDSTREAM_KAFKA": ""}).kafka is None  # '' turns following Kafka off


def test_a_bad_variable_is_refused_naming_it(capsys):
    with pytest.raises(SystemExit):
        parse(["serve"], {"WELDSTREAM_GRPC_PORT": "eighty"})
    with pytest.raises(SystemExit):
        parse(["learn"], {"WELDSTREAM_STRATEGY": "sgd"})
    assert "WELDSTREAM_STRATEGY" in capsys.readouterr().err


def test_boolean_flags_read_yes_and_no():
    assert parse(["demo"], {"WELDSTREAM_LIVE": "no"}).live_view is False
    assert parse(["demo"], {"WELDSTREAM_LIVE": "1"}).live_view is True
    assert parse(["demo", "--live"], {"WELDSTREAM_LIVE": "0"}).live_view is True


def _every_command() -> list[list[str]]:
    commands = [[name] for name in COMMANDS if name != "bench"]
    return commands + [["bench", name] for name in BENCHMARKS]


@pytest.mark.parametrize("argv", _every_command(), ids=" ".join)
def test_every_flag_has_a_variable(argv):
    parser = build_parser(argv)
    apply_environment(parser, {})
    sub = parser
    for word in argv:
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    flags = [a for a in sub._actions if any(s.startswith("--") for s in a.option_strings)
             and not isinstance(a, argparse._HelpAction)]
    assert flags, argv
    for action in flags:
        long_flag = next(s for s in action.option_strings if s.startswith("--"))
        assert f"[env {env_name(long_flag)}]" in action.help, long_flag


def test_serve_started_with_variables_only_listens_where_they_say(tmp_path):
    port = free_port()
    metrics = free_port()
    env = {"WELDSTREAM_MODEL_DIR": str(tmp_path / "models"), "WELDSTREAM_HOST": "127.0.0.1",
           "WELDSTREAM_GRPC_PORT": str(port), "WELDSTREAM_METRICS_PORT": str(metrics), "WELDSTREAM_KAFKA": ""}
    server = Service("server", ["serve"], tmp_path / "server.log", env=env).start()
    try:
        wait_ready(server, "127.0.0.1", port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as reply:
            assert b"inference_requests_total" in reply.read()
    finally:
        assert server.stop() == 0, (tmp_path / "server.log").read_text()[-2000:]
    assert (tmp_path / "models").is_dir()


def test_serve_loads_no_benchmark_or_dev_packages(tmp_path):
    """`weldstream serve` imports what serving needs only: no matplotlib, Avalanche, jax or rich."""
    script = f"""
import sys
from weldstream.cli import build_parser
from weldstream.server.app import InferenceServer
from weldstream.server.config import ServerConfig
build_parser(["serve", "--help"])
InferenceServer(ServerConfig(model_dir=__import__("pathlib").Path({str(tmp_path)!r}), kafka=None))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("matplotlib", "avalanche", "jax", "rich"))
print(heavy)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
