"""Options go where people type them: after the subcommand and its verb as well as before, with the same
meaning, the same environment variables, and `--help` at every level listing what applies there."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from weldstream.cli import build_parser
from weldstream.model import ModelConfig, build_model
from weldstream.settings import apply_environment
from weldstream.weight_store import WeightStore


def parse(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = build_parser(argv)
    apply_environment(parser, environ or {})
    return parser.parse_args(argv)


def test_group_options_after_the_verb_mean_what_they_mean_before_it():
    after = parse(["models", "pin", "3", "--model-dir", "runs/plant7", "--kafka", "kafka-0:9092"])
    before = parse(["models", "--model-dir", "runs/plant7", "--kafka", "kafka-0:9092", "pin", "3"])
    for args in (after, before):
        assert (args.models_command, args.version) == ("pin", 3)
        assert (str(args.model_dir), args.kafka) == ("runs/plant7", "kafka-0:9092")
    rolled = parse(["models", "rollback", "--reason", "drift", "--actor", "ops", "--registry", "off"])
    assert (rolled.version, rolled.reason, rolled.actor, rolled.registry) == (None, "drift", "ops", "off")


def test_an_option_given_before_the_verb_is_not_reset_by_the_verb():
    args = parse(["models", "--model-dir", "runs/plant7", "--kafka", "", "list"])
    assert str(args.model_dir) == "runs/plant7" and args.kafka is None


def test_variables_hold_wherever_the_flag_could_be_typed_and_a_typed_flag_wins():
    environ = {"WELDSTREAM_MODEL_DIR": "/srv/models", "WELDSTREAM_KAFKA": "kafka-1:9092"}
    assert str(parse(["models", "list"], environ).model_dir) == "/srv/models"
    assert str(parse(["models", "list", "--model-dir", "mine"], environ).model_dir) == "mine"
    assert str(parse(["models", "--model-dir", "mine", "list"], environ).model_dir) == "mine"
    assert parse(["models", "unpin"], environ).kafka == "kafka-1:9092"


def test_the_global_log_level_is_taken_after_any_subcommand():
    assert parse(["serve", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert parse(["--log-level", "ERROR", "serve"]).log_level == "ERROR"
    assert parse(["serve"]).log_level == "INFO"
    assert parse(["bench", "gem-step", "--log-level", "WARNING"]).log_level == "WARNING"
    assert parse(["models", "show", "2", "--log-level", "DEBUG"]).log_level == "DEBUG"


def test_a_boolean_copy_after_the_verb_keeps_its_help_readable():
    parser = build_parser(["models", "list"])
    models = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["models"]
    verb = next(a for a in models._actions if isinstance(a, argparse._SubParsersAction)).choices["list"]
    assert "SUPPRESS" not in verb.format_help()


def weldstream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "weldstream.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("argv", [["models", "pin"], ["models"], ["bench", "serve"], ["serve"]], ids=" ".join)
def test_help_at_every_level_lists_the_options_that_apply_there(argv):
    shown = weldstream(*argv, "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--log-level" in shown.stdout
    if argv[0] == "models":
        assert "--model-dir" in shown.stdout and "--kafka-security-protocol" in shown.stdout


def test_pin_with_every_option_after_the_verb_pins(tmp_path):
    store = WeightStore(tmp_path / "models")
    for version in (1, 2):
        store.publish(build_model(ModelConfig(), seed=version).state_dict(), ModelConfig(), parent_version=version - 1,
                      scores={"ut": {"miou": 0.5, "dice": 0.5, "samples": 4}})
    pinned = weldstream("models", "pin", "1", "--model-dir", str(store.root), "--kafka", "", "--reason", "audit")
    assert pinned.returncode == 0, pinned.stderr
    assert "pin: served version 2 -> 1" in pinned.stdout and store.pinned() == 1
