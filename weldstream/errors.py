"""Domain exceptions shared by every room; each edge maps them to its own wire errors in one place."""

from __future__ import annotations


class InvalidInput(ValueError):
    """A request or message that cannot be used as it is; `field` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ModelUnavailable(RuntimeError):
    """No model is loaded yet, or the server is draining."""


class Overloaded(RuntimeError):
    """The inference queue is full; the caller should back off and retry."""


class CorruptVersion(RuntimeError):
    """A stored model version whose bytes do not match its manifest checksum."""
