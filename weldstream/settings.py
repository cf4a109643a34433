"""Settings declared once: a config dataclass field carries its default and help, and becomes a flag that
also reads the environment variable named after it (``--grpc-port`` <-> ``WELDSTREAM_GRPC_PORT``).

systemd units, compose files and Kubernetes manifests then set environment variables only, and a flag
given on the command line still wins over its variable. Only ``apply_environment`` reads the
environment, and only the command line calls it (from ``main()``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "WELDSTREAM_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def setting(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,
            parse: Callable[[str], Any] | None = None, choices: Iterable[Any] | None = None,
            default_factory: Callable[[], Any] | Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line setting.

    ``flag`` overrides the name derived from the field (``poll_interval_s`` -> ``--poll-interval-s``);
    ``parse`` turns the flag's text into the field's value (default: the default value's type).
    """
    metadata = {"help": help, "flag": flag, "parse": parse, "choices": tuple(choices) if choices else None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def optional_text(text: str) -> str | None:
    """'' -> None, so an empty flag or variable turns an optional address off."""
    return text or None


def optional_path(text: str) -> Path | None:
    """'' -> None, so an empty flag or variable leaves an optional file unset."""
    return Path(text) if text else None


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'); '' -> ()."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def env_name(flag: str) -> str:
    """'--grpc-port' -> 'WELDSTREAM_GRPC_PORT'."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def settings_of(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are command-line settings, in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_settings(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                 skip: Iterable[str] = ()) -> None:
    """One flag per setting of ``cls``; its default and help come from the dataclass."""
    skipped = set(skip)
    for field in settings_of(cls):
        if field.name in skipped:
            continue
        default = _default(field)
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": field.metadata["help"]}
        if field.metadata["choices"]:
            kwargs["choices"] = field.metadata["choices"]
        if isinstance(default, bool) and field.metadata["parse"] is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = field.metadata["parse"] or _parser_for(default)
        parser.add_argument(flag_of(field), **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """Build ``cls`` from the parsed settings (and ``fixed`` values the command decides itself)."""
    values = {f.name: getattr(args, f.name) for f in settings_of(cls) if hasattr(args, f.name)}
    values.update(fixed)
    return cls(**values)


def apply_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Make every long flag of ``parser`` and its subcommands default to its ``WELDSTREAM_*`` variable.

    argparse parses a string default like a command-line value, so a variable goes through the flag's
    own type and checks; a flag on the command line still wins. Help texts name the variable.
    """
    for sub, action in _long_options(parser):
        flag = next(s for s in action.option_strings if s.startswith("--"))
        name = env_name(flag)
        action.help = f"{action.help or ''} [env {name}]".strip() if action.help != argparse.SUPPRESS else action.help
        if name not in environ or action.default is argparse.SUPPRESS:
            continue  # a SUPPRESS copy after a verb (weldstream.cli.verbs) sets a value only when typed
        text = environ[name]
        if action.nargs == 0:  # store_true / store_false / --x/--no-x
            action.default = _boolean(name, text, action)
            continue
        if action.choices is not None:
            value = action.type(text) if callable(action.type) else text
            if value not in action.choices:
                sub.error(f"{name}={text!r}: choose one of {', '.join(map(str, action.choices))}")
        action.default = text


def _long_options(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _long_options(sub)
        elif any(s.startswith("--") for s in action.option_strings) and not isinstance(
                action, argparse._HelpAction | argparse._VersionAction):
            yield parser, action


def _boolean(name: str, text: str, action: argparse.Action) -> bool:
    word = text.strip().lower()
    if word not in TRUE_WORDS | FALSE_WORDS:
        raise SystemExit(f"weldstream: {name}={text!r} is not a boolean (use 1/0, true/false, yes/no)")
    on = word in TRUE_WORDS
    if isinstance(action, argparse.BooleanOptionalAction):
        return on
    return bool(action.const) if on else bool(action.default)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _parser_for(default: Any) -> Callable[[str], Any]:
    if isinstance(default, Path):
        return Path
    if isinstance(default, bool | int | float):
        return type(default)
    return str
