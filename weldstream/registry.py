"""The model registry: what every version is, where it came from, how it scored, and who served it when.

One SQL schema, two back ends: a SQLite file in the weight store (the default, nothing to run) or a
PostgreSQL server (``--registry postgresql://user:password@host:port/db``, through the pure-Python
``pg8000`` driver from the ``postgres`` extra). The weight store stays the source of truth for weights
and the pin; the registry is the history a dashboard or an operator queries:

- ``versions`` and ``scores``: one row per published version (its parent, strategy, manifest) and one
  per version and domain;
- ``rounds``: every time a trainer judged a candidate: strategy, scans and offsets learned, duration,
  the served version it was compared with, and whether it was promoted or refused (and why);
- ``actions``: operators' pins, unpins and rollbacks, and the learner's adoption of consolidated versions;
- ``serving``: each server's version from a given time on (it served it until its next row).

Every write is one short transaction; a connection is shared by the threads of one process under a lock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from weldstream.weight_store import Manifest, WeightStore

log = logging.getLogger(__name__)
REGISTRY_FILE = "registry.sqlite"
OFF = "off"
# The --registry setting, shared by every process that writes to the registry.
REGISTRY_HELP = ("model registry: '' = registry.sqlite in the model dir, a file, "
                 "postgresql://user:password@host:port/db, or 'off'")

_TABLES = (
    """CREATE TABLE IF NOT EXISTS versions (
        version BIGINT PRIMARY KEY, parent_version BIGINT NOT NULL, sha256 TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, strategy TEXT NOT NULL, manifest TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS scores (
        version BIGINT NOT NULL, domain TEXT NOT NULL, miou DOUBLE PRECISION NOT NULL,
        dice DOUBLE PRECISION NOT NULL, samples BIGINT NOT NULL, PRIMARY KEY (version, domain))""",
    """CREATE TABLE IF NOT EXISTS rounds (
        id {serial}, trainer TEXT NOT NULL, strategy TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
        duration_s DOUBLE PRECISION NOT NULL, scans BIGINT NOT NULL, steps BIGINT NOT NULL, offsets TEXT NOT NULL,
        compared_with BIGINT NOT NULL, outcome TEXT NOT NULL, version BIGINT, reason TEXT NOT NULL,
        scores TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS actions (
        id {serial}, at DOUBLE PRECISION NOT NULL, action TEXT NOT NULL, version BIGINT, previous BIGINT,
        actor TEXT NOT NULL, reason TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS serving (
        id {serial}, server TEXT NOT NULL, version BIGINT NOT NULL, since DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS serving_by_server ON serving (server, since)",
)
_SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}


@dataclass(frozen=True)
class Round:
    """One judgement of a candidate (``outcome`` "promoted" or "refused")."""

    trainer: str  # "learner" | "consolidate"
    strategy: str
    started_at: float
    duration_s: float
    scans: int
    steps: int
    compared_with: int
    outcome: str
    version: int | None = None
    reason: str = ""
    offsets: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionRow:
    version: int
    parent_version: int
    sha256: str
    created_at: float
    strategy: str
    manifest: Manifest


@dataclass(frozen=True)
class Action:
    at: float
    action: str
    version: int | None
    previous: int | None
    actor: str
    reason: str


@dataclass(frozen=True)
class Serving:
    server: str
    version: int
    since: float
    until: float | None  # None: still serving it (as far as the registry knows)


class Registry:
    """A connection to the registry database; create it with ``open_registry``."""

    def __init__(self, connection: Any, dialect: str, where: str) -> None:
        self._db = connection
        self.dialect = dialect
        self.where = where
        self._lock = threading.Lock()
        self.ensure_tables(_TABLES)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes
    def record_version(self, manifest: Manifest) -> None:
        """Add a published version and its scores (again is a no-op: versions are immutable)."""
        self._execute_many([
            ("INSERT INTO versions (version, parent_version, sha256, created_at, strategy, manifest) "
             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO NOTHING",
             (manifest.version, manifest.parent_version, manifest.sha256, manifest.created_at, manifest.strategy,
              manifest.to_json())),
            *(("INSERT INTO scores (version, domain, miou, dice, samples) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT (version, domain) DO NOTHING",
               (manifest.version, domain, s["miou"], s["dice"], int(s["samples"])))
              for domain, s in sorted(manifest.scores.items())),
        ])

    def record_round(self, r: Round) -> None:
        self._execute(
            "INSERT INTO rounds (trainer, strategy, started_at, duration_s, scans, steps, offsets, compared_with, "
            "outcome, version, reason, scores) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.trainer, r.strategy, r.started_at, r.duration_s, r.scans, r.steps, json.dumps(r.offsets),
             r.compared_with, r.outcome, r.version, r.reason, json.dumps(r.scores, sort_keys=True)))

    def record_action(self, action: str, version: int | None, previous: int | None, actor: str,
                      reason: str = "") -> None:
        self._execute("INSERT INTO actions (at, action, version, previous, actor, reason) VALUES (?, ?, ?, ?, ?, ?)",
                      (time.time(), action, version, previous, actor, reason))

    def record_serving(self, server: str, version: int, since: float | None = None) -> None:
        self._execute("INSERT INTO serving (server, version, since) VALUES (?, ?, ?)",
                      (server, version, time.time() if since is None else since))

    def sync(self, store: WeightStore) -> int:
        """Add the store's versions that the registry lacks (written before it existed); returns how many."""
        known = {row[0] for row in self._query("SELECT version FROM versions")}
        missing = [v for v in store.versions() if v not in known]
        for version in missing:
            self.record_version(store.manifest(version))
        return len(missing)

    # -- reads
    def versions(self) -> list[VersionRow]:
        return [_version_row(row) for row in self._query(
            "SELECT version, parent_version, sha256, created_at, strategy, manifest FROM versions ORDER BY version")]

    def version(self, version: int) -> VersionRow | None:
        rows = self._query("SELECT version, parent_version, sha256, created_at, strategy, manifest FROM versions "
                           "WHERE version = ?", (version,))
        return _version_row(rows[0]) if rows else None

    def scores(self, version: int) -> dict[str, dict[str, float]]:
        rows = self._query("SELECT domain, miou, dice, samples FROM scores WHERE version = ? ORDER BY domain",
                           (version,))
        return {d: {"miou": float(m), "dice": float(c), "samples": int(n)} for d, m, c, n in rows}

    def lineage(self, version: int) -> list[int]:
        """The version, its parent, its parent's parent ... down to a root (0 or an unknown version)."""
        parents = dict(self._query("SELECT version, parent_version FROM versions"))
        chain = [version]
        while chain[-1] in parents and parents[chain[-1]] not in chain:
            chain.append(int(parents[chain[-1]]))
        return chain

    def rounds(self, version: int | None = None, limit: int = 50) -> list[Round]:
        where, params = ("WHERE version = ?", (version,)) if version is not None else ("", ())
        rows = self._query(
            "SELECT trainer, strategy, started_at, duration_s, scans, steps, compared_with, outcome, version, reason, "
            f"offsets, scores FROM rounds {where} ORDER BY id DESC LIMIT {int(limit)}", params)
        return [Round(*row[:10], offsets=json.loads(row[10]), scores=json.loads(row[11])) for row in rows]

    def actions(self, limit: int = 50) -> list[Action]:
        rows = self._query("SELECT at, action, version, previous, actor, reason FROM actions "
                           f"ORDER BY id DESC LIMIT {int(limit)}")
        return [Action(*row) for row in rows]

    def serving(self, version: int | None = None) -> list[Serving]:
        """Who served what from when until when, oldest first (optionally only spans of one version)."""
        rows = self._query("SELECT server, version, since FROM serving ORDER BY server, since, id")
        spans = []
        for i, (server, served, since) in enumerate(rows):
            following = rows[i + 1] if i + 1 < len(rows) and rows[i + 1][0] == server else None
            spans.append(Serving(server, int(served), float(since), float(following[2]) if following else None))
        spans.sort(key=lambda s: (s.since, s.server))
        return [s for s in spans if version is None or s.version == version]

    # -- for other rooms' tables in the same database (the console's review queue and accounts)
    def ensure_tables(self, statements: Sequence[str]) -> None:
        """Create tables (``{serial}`` becomes the dialect's auto-increment key) unless they exist."""
        for statement in statements:
            self._execute(statement.format(serial=_SERIAL[self.dialect]))

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """One write in its own transaction (``?`` placeholders); returns how many rows it changed, which
        is what a conditional update (a claim, a state change) needs to know whether it won."""
        with self._lock:
            cursor = self._db.cursor()
            try:
                cursor.execute(self._sql(statement), tuple(params))
                changed = cursor.rowcount
                self._db.commit()
                return changed
            except BaseException:
                self._db.rollback()
                raise
            finally:
                cursor.close()

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._query(statement, params)

    # -- plumbing
    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self._execute_many([(statement, params)])

    def _execute_many(self, statements: list[tuple[str, Sequence[Any]]]) -> None:
        with self._lock:
            cursor = self._db.cursor()
            try:
                for statement, params in statements:
                    cursor.execute(self._sql(statement), tuple(params))
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
            finally:
                cursor.close()

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            cursor = self._db.cursor()
            try:
                cursor.execute(self._sql(statement), tuple(params))
                rows = [tuple(row) for row in cursor.fetchall()]
                self._db.commit()  # ends the read transaction, so the next read sees other writers' rows
                return rows
            except BaseException:
                self._db.rollback()
                raise
            finally:
                cursor.close()


def _version_row(row: tuple) -> VersionRow:
    version, parent, sha256, created_at, strategy, manifest = row
    return VersionRow(int(version), int(parent), sha256, float(created_at), strategy, Manifest.from_json(manifest))


def registry_location(url: str, model_dir: Path | str) -> str:
    """What ``--registry`` means: '' is the SQLite file in the weight store."""
    return url or str(Path(model_dir) / REGISTRY_FILE)


def redacted(url: str, model_dir: Path | str) -> str:
    """Where the registry is, for logs: never the password."""
    parsed = urlparse(registry_location(url, model_dir))
    if parsed.password is None:
        return registry_location(url, model_dir)
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()


def open_registry(url: str, model_dir: Path | str) -> Registry:
    """'' (SQLite in the weight store), a file path or sqlite:///path, or postgresql://user:pw@host:port/db."""
    where = registry_location(url, model_dir)
    parsed = urlparse(where)
    if parsed.scheme in ("postgresql", "postgres"):
        try:
            import pg8000.dbapi
        except ImportError:
            raise ValueError("a PostgreSQL registry needs the pg8000 driver: pip install 'weldstream[postgres]'") \
                from None
        connection = pg8000.dbapi.connect(
            user=unquote(parsed.username or "postgres"), password=unquote(parsed.password) if parsed.password else None,
            host=parsed.hostname or "127.0.0.1", port=parsed.port or 5432,
            database=parsed.path.lstrip("/") or "postgres", timeout=10)
        return Registry(connection, "postgresql", redacted(url, model_dir))
    if parsed.scheme not in ("", "sqlite"):
        raise ValueError(f"registry {url!r}: use a file path, sqlite:///path or postgresql://user@host:port/db")
    path = Path(parsed.path if parsed.scheme == "sqlite" else where)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (learner, servers, the CLI) share the file: WAL lets readers run beside a writer,
    # and a writer waits up to 10 s for another's lock instead of failing.
    connection = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    return Registry(connection, "sqlite", str(path))


def open_configured(url: str, model_dir: Path | str) -> Registry | None:
    """The registry a long-running process (server, learner, job) writes to; None for 'off', or when it
    cannot be opened (a read-only weight store, a database that is down): that is logged, and the
    process goes on without one."""
    if url == OFF:
        return None
    try:
        return open_registry(url, model_dir)
    except ValueError:
        raise  # a malformed --registry is the operator's to fix now
    except Exception as exc:  # any driver's or file system's error
        log.warning("model registry %s unavailable (%s); going on without it", redacted(url, model_dir), exc)
        return None


def best_effort(registry: Registry | None, write: str, *args: Any, **kwargs: Any) -> None:
    """Call a registry write; a failure is logged, never raised. The weight store stays the source of
    truth (``sync`` backfills versions), so a registry outage never stops training or serving."""
    if registry is None:
        return
    try:
        getattr(registry, write)(*args, **kwargs)
    except Exception as exc:  # any driver's error: sqlite3, pg8000, a dropped connection
        log.warning("registry %s: %s failed (%s)", registry.where, write, exc)
