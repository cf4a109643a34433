"""Options of a command group that are accepted after its verb too.

``weldstream models pin 3 --model-dir D`` and ``weldstream models --model-dir D pin 3`` mean the same, as
they do for git, kubectl and click tools. argparse lets a verb's defaults overwrite what was parsed
before the verb, so the verb's copies default to SUPPRESS: a copy sets its value only when it is typed
there, and the group's own option keeps the default and its ``WELDSTREAM_*`` variable
(``weldstream.settings.apply_environment`` leaves the copies alone).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

Fill = Callable[[argparse.ArgumentParser], None]


def accept_after(verbs: Iterable[argparse.ArgumentParser], fill: Fill) -> None:
    """Give each verb the options ``fill`` gives its group, as copies that set a value only when typed."""
    for verb in verbs:
        first_new = len(verb._actions)
        fill(verb)
        for action in verb._actions[first_new:]:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.help and "%(default)s" in action.help:  # BooleanOptionalAction's "(default: ...)"
                action.help = action.help.replace("%(default)s", str(action.default))
            action.default = argparse.SUPPRESS
