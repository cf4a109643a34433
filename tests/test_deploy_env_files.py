"""The systemd env examples name real settings, and where they say so, show their defaults.

An unknown WELDSTREAM_* variable is ignored without a word, so a stale line in an example is a setting
an operator changes to no effect.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from weldstream.cli import build_parser
from weldstream.settings import apply_environment, env_name

SYSTEMD = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
LINE = re.compile(r"^(#?)(WELDSTREAM_[A-Z0-9_]+)=(.*)$")
FILES = {"learner.env.example": ("learn",), "server.env.example": ("serve",),
         "weldstream.env.example": ("serve", "learn")}


def flags(command: str) -> tuple[argparse.ArgumentParser, dict[str, argparse.Action]]:
    """The parser with ``command``'s options, and every long flag it takes (top-level ones too), by variable."""
    parser = build_parser([command])
    actions = {}
    for holder in (parser, *(a.choices[command] for a in parser._actions if isinstance(a, argparse._SubParsersAction))):
        for action in holder._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    actions[env_name(option)] = action
    return parser, actions


def variables(name: str) -> list[tuple[bool, str, str, bool]]:
    """(commented out, variable, value, whether its comment calls the value an example) for every
    variable line of an example file."""
    found, comment = [], ""
    for line in (SYSTEMD / name).read_text().splitlines():
        if match := LINE.match(line):
            found.append((match[1] == "#", match[2], match[3], "an example" in comment))
        elif line.startswith("# "):
            comment += line
        elif not line.strip():
            comment = ""
    return found


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_variable_in_an_env_example_is_a_flag_of_its_command(name):
    known = set().union(*(flags(command)[1] for command in FILES[name]))
    unknown = [variable for _, variable, _, _ in variables(name) if variable not in known]
    assert variables(name) and not unknown, f"{name} names settings no command reads: {unknown}"


@pytest.mark.parametrize("name", ["learner.env.example", "server.env.example"])
def test_commented_values_in_a_role_example_are_the_defaults(name):
    assert "The values shown are the defaults unless the comment calls them an example" in \
        " ".join(line.lstrip("# ") for line in (SYSTEMD / name).read_text().splitlines())
    (command,) = FILES[name]
    parser, actions = flags(command)
    defaults = parser.parse_args([command])
    wrong = []
    for commented, variable, value, example in variables(name):
        action = actions[variable]
        if not commented or example or action.default in (None, ""):
            continue  # a set value, an example, or an example path for a setting that is off by default
        uncommented = build_parser([command])
        apply_environment(uncommented, {variable: value})  # read as the service would read it
        shown = getattr(uncommented.parse_args([command]), action.dest)
        if shown != getattr(defaults, action.dest):
            wrong.append(f"{variable}={value} (default {action.default!r})")
    assert not wrong, f"{name} shows values that are not the defaults: {wrong}"
