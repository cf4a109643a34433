"""An operator's hold on what is served: pin a version, unpin, roll back.

The weight store's pin (a file, or a bucket's head object) says what every server serves; the registry
keeps the history of who changed it and why; an announcement on ``weld.models`` makes every replica (and
the learner, whose promotion guard compares with what is served) look at the store at once instead of at
its next poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weldstream.announcements import announce_once
from weldstream.kafka_security import KafkaSecurity
from weldstream.registry import REGISTRY_HELP, Registry
from weldstream.settings import optional_text, setting
from weldstream.stores import MODEL_DIR_HELP, STORE_HELP, VersionStore, store_location
from weldstream.topics import DEFAULT_KAFKA, MODELS
from weldstream.weight_store import DEFAULT_MODEL_DIR


@dataclass(frozen=True)
class OperatorConfig:
    """Where the `models` commands find the store and the registry, and whom they tell."""

    model_dir: Path = setting(DEFAULT_MODEL_DIR, help=MODEL_DIR_HELP)
    store: str = setting("", parse=store_location, help=STORE_HELP)
    registry: str = setting("", help=REGISTRY_HELP)
    kafka: str | None = setting(DEFAULT_KAFKA, parse=optional_text,
                                help="announce pins and rollbacks on this Kafka bootstrap ('' : don't; servers "
                                     "then follow at their next store poll)")
    models_topic: str = MODELS
    actor: str = setting("", help="who is acting, for the registry ('' : $USER)")
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)


@dataclass(frozen=True)
class Change:
    action: str  # "pin" | "unpin" | "rollback"
    served_before: int | None
    served_now: int | None


class Operator:
    def __init__(self, cfg: OperatorConfig, store: VersionStore, registry: Registry, actor: str) -> None:
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.actor = actor

    async def pin(self, version: int, reason: str = "", action: str = "pin") -> Change:
        """Hold every server on ``version`` (checksum verified first) until unpinned."""
        if version not in self.store.versions():
            raise ValueError(f"version {version} is not in {self.store.versions_dir}")
        self.store.load(version)  # a corrupt version raises CorruptVersion before anything changes
        before = self.store.served()
        self.store.pin(version)
        return await self._announce(Change(action, before, version), reason)

    async def unpin(self, reason: str = "") -> Change:
        """Servers follow the newest version again."""
        before = self.store.served()
        self.store.unpin()
        return await self._announce(Change("unpin", before, self.store.served()), reason)

    async def rollback(self, version: int | None = None, reason: str = "") -> Change:
        """Pin ``version``, or the parent of the version served now."""
        if version is None:
            served = self.store.served()
            if served is None:
                raise ValueError("nothing is served yet; there is nothing to roll back")
            version = self.store.manifest(served).parent_version
            if version == 0:
                raise ValueError(f"version {served} has no parent but the untrained version 0; "
                                 "roll back to a stored version by number")
        return await self.pin(version, reason, action="rollback")

    async def _announce(self, change: Change, reason: str) -> Change:
        version = change.served_now if change.action != "unpin" else None
        self.registry.record_action(change.action, version, change.served_before, self.actor, reason)
        if self.cfg.kafka and change.served_now is not None:
            await announce_once(self.cfg.kafka, self.cfg.models_topic, self.store.manifest(change.served_now),
                                change.action, security=self.cfg.kafka_security)
        return change
