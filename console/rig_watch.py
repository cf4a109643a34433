"""The rigs page's memory: the server's Prometheus endpoint read every few seconds, kept per rig in the registry's
database (bounded to a week), so the page shows doubt and drift over time and survives a console restart.

Each sample is one rig at one reading: the server's counters as read (scans and the doubt sum of
``inference_scan_doubt``, ``inference_drift_events_total``), what happened since the rig's previous
sample (scans served, their mean doubt, drift events) and the drift gauge and served version at that
moment. A series created at another time (or a counter that went down) means the server restarted: the new
reading counts from zero. A rig
whose readings did not change is written again only every few minutes. A server that does not answer
is shown as down, logged once, and read again at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from weldstream.console.config import ConsoleConfig
from weldstream.console.services import Services

log = logging.getLogger(__name__)
INTERVAL_S = 15.0
KEEP_S = 7 * 86400.0
UNCHANGED_EVERY_S = 300.0  # a quiet rig still gets a sample this often, so its line goes on
TIMEOUT_S = 5.0
METRICS_PORT = 8002  # `weldstream serve --metrics-port`'s default
STATE = "rigs"  # the key of Services.extras
TABLES = (
    """CREATE TABLE IF NOT EXISTS rig_samples (
        id {serial}, rig TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, created DOUBLE PRECISION NOT NULL,
        scans_total DOUBLE PRECISION NOT NULL,
        doubt_sum_total DOUBLE PRECISION NOT NULL, events_total DOUBLE PRECISION NOT NULL, scans BIGINT NOT NULL,
        doubt DOUBLE PRECISION, drift DOUBLE PRECISION, events BIGINT NOT NULL, version BIGINT)""",
    "CREATE INDEX IF NOT EXISTS rig_samples_by_rig ON rig_samples (rig, at)",
    "CREATE INDEX IF NOT EXISTS rig_samples_by_time ON rig_samples (at)",
)


@dataclass
class RigReading:
    """One rig's values in one scrape (counters as the server has them since it started)."""

    scans: float = 0.0
    doubt_sum: float = 0.0
    events: float = 0.0
    drift: float | None = None
    created: float = 0.0  # when the server made the rig's doubt series (0: not exported)
    own_scans: float | None = None  # scans behind the rig's own normalisation statistics (0: the version's)
    gain_db: float | None = None  # span of the gain curve its scans are corrected by (0: none)

    def normalisation(self) -> str | None:
        """What normalises the rig's scans now, in words (None: the server does not say)."""
        if self.gain_db and self.own_scans:
            return f"own statistics, {int(self.own_scans)} scans, after a gain curve of {self.gain_db:.1f} dB"
        if self.gain_db:
            return f"gain curve, {self.gain_db:.1f} dB"
        if self.own_scans:
            return f"own statistics, {int(self.own_scans)} scans"
        return None if self.own_scans is None and self.gain_db is None else "version's statistics"


@dataclass
class Reading:
    version: int | None = None
    requests: float = 0.0  # Segment, SegmentStream and ModelInfer calls answered OK
    rigs: dict[str, RigReading] = field(default_factory=dict)


@dataclass
class ServerState:
    """What the page says about the endpoint itself."""

    url: str
    up: bool | None = None  # None: not read yet
    error: str = ""
    checked_at: float | None = None
    version: int | None = None
    requests: float = 0.0
    normalisation: dict[str, str] = field(default_factory=dict)  # per rig, at the latest reading


def metrics_url(cfg: ConsoleConfig) -> str:
    """--server-metrics, or http://<the gRPC server's host>:8002/metrics."""
    if cfg.connection.server_metrics:
        return cfg.connection.server_metrics
    host = urlsplit(f"//{cfg.connection.server}").hostname or "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{METRICS_PORT}/metrics"


def parse(text: str) -> Reading:
    """The per-rig series of the server's exposition text (see server/metrics.py)."""
    reading = Reading()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            rig = s.labels.get("rig")
            if s.name == "inference_model_version":
                reading.version = int(s.value)
            elif s.name == "inference_requests_total" and s.labels.get("code") == "OK" and \
                    s.labels.get("method") in ("Segment", "SegmentStream", "ModelInfer"):
                reading.requests += s.value
            elif rig is None:
                continue
            elif s.name == "inference_scan_doubt_count":
                reading.rigs.setdefault(rig, RigReading()).scans = s.value
            elif s.name == "inference_scan_doubt_created":
                reading.rigs.setdefault(rig, RigReading()).created = s.value
            elif s.name == "inference_scan_doubt_sum":
                reading.rigs.setdefault(rig, RigReading()).doubt_sum = s.value
            elif s.name == "inference_drift_events_total":
                reading.rigs.setdefault(rig, RigReading()).events = s.value
            elif s.name == "inference_drift_score":
                reading.rigs.setdefault(rig, RigReading()).drift = s.value
            elif s.name == "inference_rig_statistics_scans":
                reading.rigs.setdefault(rig, RigReading()).own_scans = s.value
            elif s.name == "inference_rig_gain_db":
                reading.rigs.setdefault(rig, RigReading()).gain_db = s.value
    return reading


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (an operator's setting)
        return response.read().decode()


@dataclass
class Last:
    at: float
    created: float
    scans_total: float
    doubt_sum_total: float
    events_total: float
    drift: float | None
    version: int | None


class RigWatch:
    """Reads the endpoint, writes the samples that changed, forgets what is older than KEEP_S."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.state = ServerState(metrics_url(svc.cfg))
        svc.extras[STATE] = self.state
        svc.registry.ensure_tables(TABLES)
        self.last = self._last_rows()

    def _last_rows(self) -> dict[str, Last]:
        rows = self.svc.registry.query(
            "SELECT s.rig, s.at, s.created, s.scans_total, s.doubt_sum_total, s.events_total, s.drift, s.version "
            "FROM rig_samples s JOIN (SELECT rig, MAX(id) AS id FROM rig_samples GROUP BY rig) m ON s.id = m.id")
        return {rig: Last(*values) for rig, *values in rows}

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(INTERVAL_S)

    async def once(self) -> None:
        state = self.state
        try:
            reading = parse(await asyncio.to_thread(fetch, state.url))
        except Exception as exc:  # refused, timed out, not Prometheus text: the server is down or starting
            if state.up is not False:
                log.warning("server metrics at %s do not answer (%s); the rigs page says so and keeps trying",
                            state.url, exc)
            state.up, state.error, state.checked_at = False, f"{type(exc).__name__}: {exc}", time.time()
            return
        if state.up is False:
            log.info("server metrics at %s answer again", state.url)
        state.up, state.error, state.checked_at = True, "", time.time()
        state.version, state.requests = reading.version, reading.requests
        state.normalisation = {rig: said for rig, r in reading.rigs.items() if (said := r.normalisation())}
        try:
            await asyncio.to_thread(self.record, reading, state.checked_at)
        except Exception as exc:  # the database is down: the next reading tries again
            log.warning("could not keep rig samples (%s)", exc)

    def record(self, reading: Reading, now: float) -> int:
        """Write one sample per rig whose readings changed (or that was quiet for a while); returns how many."""
        written = 0
        for rig, r in sorted(reading.rigs.items()):
            last = self.last.get(rig)
            restarted = last is not None and (r.created != last.created or r.scans < last.scans_total
                                              or r.events < last.events_total)
            base = Last(now, r.created, 0.0, 0.0, 0.0, None, None) if last is None or restarted else last
            scans, events = int(r.scans - base.scans_total), int(r.events - base.events_total)
            quiet = last is not None and not scans and not events and r.drift == last.drift and \
                reading.version == last.version and now - last.at < UNCHANGED_EVERY_S
            if quiet:
                continue
            doubt = (r.doubt_sum - base.doubt_sum_total) / scans if scans > 0 else None
            self.svc.registry.execute(
                "INSERT INTO rig_samples (rig, at, created, scans_total, doubt_sum_total, events_total, scans, doubt, "
                "drift, events, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rig, now, r.created, r.scans, r.doubt_sum, r.events, scans, doubt, r.drift, events, reading.version))
            self.last[rig] = Last(now, r.created, r.scans, r.doubt_sum, r.events, r.drift, reading.version)
            written += 1
        self.svc.registry.execute("DELETE FROM rig_samples WHERE at < ?", (now - KEEP_S,))
        return written


async def watch_rigs(svc: Services) -> None:
    """The console's background task (started in its lifespan) until the console stops."""
    try:
        watch = await asyncio.to_thread(RigWatch, svc)
    except Exception as exc:  # no database now: the rigs page says so; the rest of the console works
        log.warning("the rigs page has no database for its samples (%s)", exc)
        return
    await watch.run()
