"""Every rig its own BatchNorm statistics, learned from the scans it sends before any of them is labeled.

A rig whose scans differ from what the served version learned (another probe, gain curve, bit depth) is
served with statistics re-estimated from its own served scans (AdaBN; see weldstream.norm_stats): no
label, no gradient, and no other rig's masks change, because only that rig's scans are normalised with
them. How a rig goes:

1. **pending**: its first ``min_scans`` scans are served with the version's statistics, measured in the
   background (a low-priority thread with its own copy of the model) and kept in a small reservoir. Their
   drift distances (server/drift.py, computed under the version's statistics) say whether the rig looks
   like a domain the version learned; a rig stays pending (served with the version's statistics) while
   the version has no drift references to compare with.
2. It then either **keeps** the version's trained statistics (median distance at most ``keep_distance``:
   re-estimating the statistics of a rig close to a learned domain costs points) or is **adapted**: served with its
   own statistics, the version's blended in with the weight of ``prior_scans`` scans, updated with every
   scan (an exponential average past ``saturation`` scans).
   A rig that would be adapted is first matched to the learned domains' brightness profiles
   (weldstream/gain_curve.py): when undoing its gain curve along depth and across the width (another TGC
   slope, a dose falloff) brings its reservoir's median drift distance within ``keep_distance`` of the
   version's references, the rig **keeps** the version's statistics with its scans corrected by that curve,
   which BatchNorm statistics of its own could not undo. When the curve brings the rig closer but not that
   close (within ``gain_adapt_distance``: a rig with another gain curve *and* another probe or exporter), and
   the curve spans at least ``gain_adapt_min_db``, the rig is adapted on its corrected scans: the curve undoes
   the gain, its own statistics the rest (they absorb a milder curve better on their own). A rig
   still far from every learned domain after correction (another domain, whose brightness profile a curve
   only bends towards the learned one) is adapted on its scans as they are (``bench adapt``).
3. It **starts over** (back to pending, reservoir emptied) when its drift detector fires, or when
   ``patience`` scans in a row do not resemble its statistics (``Moments.mismatch``: a new probe, another
   rig behind the same id); those scans are its first ones then. A lone unlike scan is not blended in.

Statistics belong to a version: when a new version is loaded, every adapted rig's statistics are
re-estimated from its reservoir with the new weights on the loader thread, before the swap, so a batch
always finds statistics made by the very version it runs on. A rig whose scans the new version has learned
(its reservoir's median drift distance under the new version's statistics and references is at most
``keep_distance``: its labels were learned) goes back to the version's statistics when that version goes
live: after its labels are learned, statistics of its own cost points (``bench adapt``, after labels).

State (decisions, reservoirs, statistics) is written to ``state_dir`` and read back at start. Rigs past the
server's rig-label cap, scans without a rig id and untrained versions are served with the version's statistics.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weldstream.features import REFERENCE_KEY, encoder_summary, stage_channels
from weldstream.gain_curve import GainCurve, match, reference_profiles, undo
from weldstream.norm_stats import Moments, batchnorm_layers, measure, measuring_copy
from weldstream.preprocess import as_channels, pad_to_multiple, window_intensities
from weldstream.server.drift import References
from weldstream.server.metrics import ServerMetrics
from weldstream.server.model_slot import LoadedModel

log = logging.getLogger(__name__)
STATE_FILE = "rig-statistics.pt"
SAVE_EVERY_S = 300.0
PENDING, KEEP, ADAPT = "pending", "keep", "adapt"
DECISIONS = (PENDING, KEEP, ADAPT)
SAMPLE_PAST_SATURATION = 8


@dataclass(frozen=True)
class RigNormConfig:
    enabled: bool = True
    min_scans: int = 8  # scans measured before a rig's own statistics are trusted (and its decision made)
    prior_scans: float = 1.0  # weight of the version's statistics in a rig's blend, in scans
    saturation: int = 256  # past this many scans a rig's statistics are an exponential average
    # Median drift distance up to which a rig keeps the version's statistics. Learned-domain scans sit near 1
    # (distances are in units of their own spread). In `bench adapt` on the benchmark's model, the learned
    # domain and an 8-bit export (about 1) lost when re-estimated while blur (2.7) and a radiograph dose
    # gradient (3.4) gained 12-37 points; on a weaker model a depth-gain ramp at 3.6 lost 8, so no distance
    # separates every rig that gains from every rig that loses.
    keep_distance: float = 2.0
    # A gain curve spanning less than this (dB, rows and columns added) is not worth correcting: scans of a
    # learned domain differ by a few dB from their reference's mean profile.
    min_gain_db: float = 3.0
    # Median drift distance, after its gain curve is undone, up to which a rig gets its own statistics on corrected
    # scans. In `bench adapt` a depth-gain ramp with a blur or a flip/gamma/noise export sat at 2.7-5.3 after
    # correction and gained 20-31 points over its own statistics alone; the simulator's other domains sat at
    # 7.6-23.7, and corrected they lost (another TGC: 12 points on the ultrasonic version, 2 on the radiograph one).
    gain_adapt_distance: float = 6.0
    # ... and only for a curve spanning at least this (dB): a rig's own statistics absorb a milder one. A gamma-0.6
    # flip/noise export fitted a 6.6-7.4 dB curve and lost 10 points corrected (59.2 -> 49.1); the ramps above
    # fitted 24-33 dB.
    gain_adapt_min_db: float = 12.0
    mismatch: float = 1.75  # a scan this far from its rig's (Moments.mismatch; about 0.9 for a like scan) is unlike
    patience: int = 8  # scans in a row that do not resemble their rig's statistics before it starts over
    reservoir_scans: int = 32
    reservoir_pixels: int = 4 * 1024 * 1024  # per rig (a larger scan is kept alone)
    queue_scans: int = 256  # scans waiting to be measured; more are dropped (counted) ...
    queue_pixels: int = 16 * 1024 * 1024  # ... or more pixels of them
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.min_scans < 1 or self.prior_scans < 0 or self.saturation < self.min_scans:
            raise ValueError("rig normalisation needs min_scans >= 1, prior_scans >= 0, saturation >= min_scans")
        if self.reservoir_scans < 1 or self.reservoir_pixels < 1 or self.patience < 1 or self.queue_scans < 1:
            raise ValueError("rig normalisation's reservoir, patience and queue must be at least 1")

    def corrected_decision(self, distance: float, span_db: float) -> str | None:
        """For a rig whose gain curve spanning ``span_db`` puts its corrected scans at median drift ``distance``:
        KEEP (the version's statistics on corrected scans), ADAPT (its own, measured on corrected scans), or None
        (the curve is not used)."""
        if distance <= self.keep_distance:
            return KEEP
        if distance <= self.gain_adapt_distance and span_db >= self.gain_adapt_min_db:
            return ADAPT
        return None


@dataclass(frozen=True)
class Served:
    """The statistics a scan was normalised with: ``rig`` (its rig's own, from ``scans`` scans) or
    ``version`` (the served version's trained ones, ``buffers`` None); ``gain``: the rig's gain curve its
    scans are corrected by first (fitted on ``gain_scans`` of them), if it has one."""

    source: str = "version"
    scans: int = 0
    buffers: dict[str, Tensor] | None = None
    rig: str = ""
    gain: GainCurve | None = None
    gain_scans: int = 0  # scans the gain curve was fitted on

    @property
    def kind(self) -> str:
        """``rig``, ``version``, ``gain`` (the version's statistics on gain-corrected scans) or ``rig+gain``
        (the rig's own statistics on gain-corrected scans)."""
        if self.gain is None:
            return self.source
        return "rig+gain" if self.source == "rig" else "gain"


VERSION_STATISTICS = Served()


@dataclass
class Rig:
    """What the server knows of one rig, whatever version serves it."""

    decision: str = PENDING
    distances: list[float] = field(default_factory=list)  # under the version's statistics, while pending
    reservoir: deque[np.ndarray] = field(default_factory=deque)
    pixels: int = 0
    # measured scans unlike the rig's statistics, held aside: (scan, moments, drift distance)
    strangers: list[tuple[np.ndarray, Moments, float | None]] = field(default_factory=list)
    gain: GainCurve | None = None  # the gain curve its scans are corrected by (before either statistics)
    gain_scans: int = 0  # how many scans the curve was fitted on

    def keep(self, scan: np.ndarray, cfg: RigNormConfig) -> None:
        self.reservoir.append(scan)
        self.pixels += _pixels(scan)
        while len(self.reservoir) > cfg.reservoir_scans or (self.pixels > cfg.reservoir_pixels
                                                            and len(self.reservoir) > 1):
            self.pixels -= _pixels(self.reservoir.popleft())


@dataclass
class VersionStatistics:
    """One version's measuring copy, its own statistics as a prior, and its rigs' statistics."""

    version: int
    twin: torch.nn.Module
    stride: int
    prior: Moments
    device: torch.device
    rigs: dict[str, Moments] = field(default_factory=dict)  # measured scans only (no prior)
    served: dict[str, Served] = field(default_factory=dict)  # what a batch uses, rebuilt when rigs change
    references: References | None = None  # the version's learned domains (drift references), if it has them
    learned: dict[str, float] = field(default_factory=dict)  # adapted rigs this version has learned: distance
    profiles: dict[str, np.ndarray] = field(default_factory=dict)  # learned domains' brightness profiles
    gained: dict[str, tuple[GainCurve, int]] = field(default_factory=dict)  # adapted rigs it matched to a curve


def _pixels(scan: np.ndarray) -> int:
    return int(scan.shape[-2]) * int(scan.shape[-1])


class RigNormaliser:
    """Owns the rigs' statistics and the background thread that measures served scans."""

    def __init__(self, cfg: RigNormConfig, metrics: ServerMetrics | None = None,
                 on_switch: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self._metrics = metrics or ServerMetrics()
        self._on_switch = on_switch  # (rig): its scans are now normalised by other statistics than before
        self._sources: dict[str, str] = {}
        self._skipped: dict[str, int] = {}
        self._lock = threading.RLock()
        self._rigs: dict[str, Rig] = {}
        self._versions: dict[int, VersionStatistics] = {}
        self._live = -1
        self._queue: queue.Queue[tuple[str, np.ndarray, float | None] | None] = queue.Queue(cfg.queue_scans)
        self._busy = 0  # scans queued or being measured
        self._queued_pixels = 0
        self._idle = threading.Condition(self._lock)
        self._saved_at = time.monotonic()
        self._dirty = False
        self._worker: threading.Thread | None = None

    # ---- the event loop's side: cheap, never waits
    def statistics(self, rig: str, version: int) -> Served:
        """What a batch running on ``version`` normalises ``rig``'s scans with."""
        if not rig or not self.cfg.enabled:
            return VERSION_STATISTICS
        table = self._versions.get(version)
        return VERSION_STATISTICS if table is None else table.served.get(rig, VERSION_STATISTICS)

    def observe(self, rig: str, scan: np.ndarray, distance: float | None, drift_event: bool) -> None:
        """A scan of ``rig`` was served; ``distance``: its drift distance under the version's statistics
        (None when it was served with the rig's own or the version has no references)."""
        if not rig or not self.cfg.enabled or self._live not in self._versions:
            return
        if drift_event:
            self.reset(rig, "drift")
        elif self.scans(rig) >= self.cfg.saturation:
            self._skipped[rig] = skipped = self._skipped.get(rig, 0) + 1
            if skipped % SAMPLE_PAST_SATURATION:
                return  # a settled rig's statistics follow slow change from one scan in SAMPLE_PAST_SATURATION
        with self._lock:
            if self._queued_pixels + _pixels(scan) > self.cfg.queue_pixels and self._busy:
                self._metrics.rig_statistics_dropped.inc()
                return
            self._busy += 1
            self._queued_pixels += _pixels(scan)
        try:
            self._queue.put_nowait((rig, scan, distance))
        except queue.Full:
            self._done(scan)
            self._metrics.rig_statistics_dropped.inc()

    # ---- lifecycle
    def start(self) -> None:
        if self.cfg.enabled and self._worker is None:
            self._worker = threading.Thread(target=self._run, name="rig-statistics", daemon=True)
            self._worker.start()

    def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        self.save()

    def settle(self, timeout_s: float = 120.0) -> None:
        """Block until every scan observed so far has been measured (for benchmarks and tests)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"rig statistics still measuring after {timeout_s} s")
                self._idle.wait(min(left, 0.05))

    def scans(self, rig: str, version: int | None = None) -> int:
        table = self._versions.get(self._live if version is None else version)
        moments = table.rigs.get(rig) if table is not None else None
        return int(round(moments.scans)) if moments is not None else 0

    def decision(self, rig: str) -> str:
        with self._lock:
            state = self._rigs.get(rig)
            return state.decision if state is not None else PENDING

    def rigs(self) -> list[str]:
        with self._lock:
            return sorted(self._rigs)

    # ---- versions (the loader thread's side)
    def prepare(self, loaded: LoadedModel) -> None:
        """Before ``loaded`` goes live: its measuring copy, and every adapted rig's statistics re-estimated
        from the rig's reservoir with its weights. Runs on the loader thread."""
        if not self.cfg.enabled or loaded.untrained:
            return
        table = self._table(loaded)
        with self._lock:
            adapted = {rig: (list(state.reservoir), state.gain) for rig, state in self._rigs.items()
                       if state.decision == ADAPT}
            live = self._versions.get(self._live)
        # Rigs adapted while no version had brightness profiles (one published before them, or state from such a
        # server) are matched to a gain curve by the first version that has them.
        first_profiles = bool(table.profiles) and (live is None or not live.profiles)
        for rig, (scans, gain) in adapted.items():
            if scans and table.references is not None:
                distance = statistics.median(self._distance(table, scan, gain=gain) for scan in scans)
                if distance <= self.cfg.keep_distance:
                    table.learned[rig] = distance  # back to the version's statistics when it goes live
                    continue
                if first_profiles and gain is None:
                    curve, matched = self._match_gain(table, scans)
                    if curve is not None and matched <= self.cfg.keep_distance:
                        table.gained[rig] = (curve, len(scans))
                        continue
            parts = [self._measure(table, scan, gain) for scan in scans]
            if parts:
                table.rigs[rig] = Moments.pooled(parts)
        with self._lock:
            for rig in table.rigs:
                if self._rigs.get(rig) is not None and self._rigs[rig].decision == ADAPT:
                    table.served[rig] = self._served(table, rig)
            self._carry_gains(table)
            self._versions[loaded.version] = table

    def _table(self, loaded: LoadedModel) -> VersionStatistics:
        stats = loaded.manifest.metrics.get(REFERENCE_KEY) if loaded.manifest is not None else None
        return VersionStatistics(loaded.version, measuring_copy(loaded.module), loaded.config.stride,
                                 Moments.of_version(loaded.module, self.cfg.prior_scans), loaded.device,
                                 references=References.from_manifest(loaded.manifest, stage_channels(loaded.module)),
                                 profiles=reference_profiles(stats or {}))

    def _carry_gains(self, table: VersionStatistics) -> None:
        """A gain curve belongs to the rig, not the version (it is fitted on the scans): every version serves
        the rig's corrected scans with its own statistics, even one that has learned the rig's labeled scans as
        they come (corrected, they look like the domain a version knows best: ``bench adapt``, after labels).
        Under the lock."""
        for rig, state in self._rigs.items():
            if state.decision == KEEP and state.gain is not None:
                table.served[rig] = Served("version", 0, None, rig, state.gain, state.gain_scans)

    def follow(self, version: int) -> None:
        """``version`` is live now; statistics of versions no batch can lease any more are dropped."""
        with self._lock:
            previous, self._live = self._live, version
            for old in [v for v in self._versions if v not in (version, previous)]:
                del self._versions[old]
            table = self._versions.get(version)
            learned = []
            for rig, distance in (table.learned if table is not None else {}).items():
                state = self._rigs.get(rig)
                if state is not None and state.decision == ADAPT:
                    state.decision = KEEP
                    self._dirty = True
                    learned.append(rig)
                    log.info("rig %r: version %d has learned its scans (median drift distance %.2f); it keeps "
                             "the version's statistics", rig, version, distance)
            for rig, (curve, scans) in (table.gained if table is not None else {}).items():
                state = self._rigs.get(rig)
                if state is not None and state.decision == ADAPT and state.gain is None:
                    state.decision, state.gain, state.gain_scans = KEEP, curve, scans
                    self._dirty = True
                    learned.append(rig)
                    log.info("rig %r: version %d matches it to %r by a gain curve of %.1f dB; it keeps the "
                             "version's statistics on corrected scans", rig, version, curve.domain, curve.span_db)
            if table is not None:
                self._carry_gains(table)  # also rigs adapted on corrected scans that this version has learned
        if table is not None:
            for rig in list(table.rigs):
                self._changed(rig, table.served.get(rig, VERSION_STATISTICS))
        for rig in learned:
            self._changed(rig, table.served.get(rig, VERSION_STATISTICS) if table is not None else VERSION_STATISTICS)

    def reset(self, rig: str, reason: str) -> None:
        """The rig starts over: pending, nothing measured, reservoir empty."""
        with self._lock:
            if rig not in self._rigs:
                return
            self._rigs[rig] = Rig()
            for table in self._versions.values():
                table.rigs.pop(rig, None)
                table.served.pop(rig, None)
            self._dirty = True
        log.warning("rig %r starts its normalisation statistics over (%s)", rig, reason)
        self._metrics.rig_statistics_resets.labels(rig, reason).inc()
        self._changed(rig, VERSION_STATISTICS)

    def _changed(self, rig: str, served: Served) -> None:
        self._metrics.rig_statistics_scans.labels(rig).set(served.scans)
        self._metrics.rig_gain_db.labels(rig).set(served.gain.span_db if served.gain is not None else 0.0)
        if self._sources.get(rig, "version") != served.kind and self._on_switch is not None:
            self._on_switch(rig)
        self._sources[rig] = served.kind

    # ---- the worker
    def _run(self) -> None:
        from weldstream.server.loader import lower_thread_priority

        lower_thread_priority()
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._maybe_save()
                continue
            if item is None:
                return
            try:
                self._take(*item)
            except Exception:  # noqa: BLE001 - one scan must not stop the rigs' statistics
                log.exception("could not measure a scan of rig %r", item[0])
            finally:
                self._done(item[1])
            self._maybe_save()

    def _done(self, scan: np.ndarray) -> None:
        with self._idle:
            self._busy -= 1
            self._queued_pixels -= _pixels(scan)
            self._idle.notify_all()

    def _take(self, rig: str, scan: np.ndarray, distance: float | None) -> None:
        cfg = self.cfg
        with self._lock:
            table = self._versions.get(self._live)
            if table is None:
                return
            state = self._rigs.setdefault(rig, Rig())
            if state.decision == KEEP:
                return  # served with the version's statistics; drift events start it over
            gain = state.gain  # an adapted rig's statistics are those of its corrected scans
        if not np.ptp(scan):
            return  # a blank scan says nothing about the rig's statistics (and has no variance to measure)
        moments = self._measure(table, scan, gain)
        admitted = [(scan, moments, distance)]
        with self._lock:
            if self._rigs.get(rig) is not state or self._versions.get(self._live) is not table:
                return  # reset, or a swap, while measuring
            current = table.rigs.get(rig)
            if (current is not None and state.decision == ADAPT and current.scans >= cfg.min_scans
                    and current.mismatch(moments) > cfg.mismatch):
                # Unlike the rig's scans: held aside, not blended in. One stray scan is forgotten at the next
                # like one; ``patience`` in a row mean the rig changed: it starts over from them.
                state.strangers.append((scan, moments, distance))
                if len(state.strangers) < cfg.patience:
                    return
                admitted = state.strangers
                self.reset(rig, "mismatch")
                state = self._rigs[rig]
            else:
                state.strangers = []
        if gain is not None and state.gain is None:
            # the rig started over: its new first scans were measured corrected by the old rig's curve
            admitted = [(x, self._measure(table, x), d) for x, _, d in admitted]
        with self._lock:
            if self._rigs.get(rig) is not state or self._versions.get(self._live) is not table:
                return
            decided = [self._admit(table, rig, state, *item) for item in admitted][-1]
            served = table.served.get(rig, VERSION_STATISTICS)
            # a rig just found unlike every learned domain is first matched to a gain curve
            matching = decided and state.decision == ADAPT and table.profiles and table.references
            reservoir = list(state.reservoir) if matching else []
        if reservoir:
            served = self._try_gain(table, rig, state, reservoir) or served
        self._changed(rig, served)

    def _try_gain(self, table: VersionStatistics, rig: str, state: Rig, reservoir: list[np.ndarray]
                  ) -> Served | None:
        """A rig just found unlike every learned domain: if undoing a gain curve makes its reservoir like one,
        it keeps the version's statistics on corrected scans; if it brings the reservoir within
        ``gain_adapt_distance``, its own statistics are measured on corrected scans. Measured outside the lock
        (forward passes)."""
        curve, distance = self._match_gain(table, reservoir)
        decision = self.cfg.corrected_decision(distance, curve.span_db) if curve is not None else None
        if curve is None or decision is None:
            return None
        keep = decision == KEEP
        corrected = None if keep else Moments.pooled([self._measure(table, scan, curve) for scan in reservoir])
        with self._lock:
            if self._rigs.get(rig) is not state or self._versions.get(self._live) is not table or \
                    state.decision != ADAPT:
                return None
            state.gain, state.gain_scans = curve, len(reservoir)
            for other in self._versions.values():
                other.rigs.pop(rig, None)
            if corrected is None:
                state.decision = KEEP
                self._carry_gains(table)
            else:
                table.rigs[rig] = corrected
                table.served[rig] = self._served(table, rig)
            self._dirty = True
            served = table.served[rig]
        log.info("rig %r: %s with its scans corrected by a gain curve of %.1f dB against %r (median drift distance "
                 "%.2f, was %.2f)", rig, "keeps the version's statistics" if keep else "gets its own statistics",
                 curve.span_db, curve.domain, distance, statistics.median(state.distances))
        return served

    def _match_gain(self, table: VersionStatistics, reservoir: list[np.ndarray]) -> tuple[GainCurve | None, float]:
        """The learned domain whose brightness profile, once the rig's gain curve against it is undone, puts the
        reservoir's median drift distance lowest: that curve and distance (None if no curve is worth applying)."""
        raw = [self._raw(table, scan) for scan in reservoir]
        best: tuple[GainCurve | None, float] = (None, float("inf"))
        for domain, reference in sorted(table.profiles.items()):
            curve = match(raw, reference, domain)
            if curve.span_db < self.cfg.min_gain_db:
                continue
            distance = statistics.median(self._distance(table, window_intensities(undo(x, curve)), windowed=True)
                                         for x in raw)
            if distance < best[1]:
                best = (curve, distance)
        return best

    def _admit(self, table: VersionStatistics, rig: str, state: Rig, scan: np.ndarray, moments: Moments,
               distance: float | None) -> bool:
        """Blend one measured scan into its rig's statistics (under the lock); True if that made its decision."""
        cfg = self.cfg
        decided = False
        state.keep(scan, cfg)
        current = table.rigs.get(rig)
        if current is not None and current.scans >= cfg.saturation:
            current = replace(current, scans=cfg.saturation - 1.0)
        table.rigs[rig] = moments if current is None else Moments.pooled([current, moments])
        if state.decision == PENDING:
            if distance is not None:
                state.distances.append(distance)
            if table.rigs[rig].scans >= cfg.min_scans and len(state.distances) >= cfg.min_scans:
                state.decision = self._decide(state)
                decided = True
                log.info("rig %r: %s (median drift distance %.2f over %d scans)", rig,
                         "keeps the version's statistics" if state.decision == KEEP else "gets its own statistics",
                         statistics.median(state.distances), len(state.distances))
        if state.decision == ADAPT:
            table.served[rig] = self._served(table, rig)
        elif state.decision == KEEP:
            table.rigs.pop(rig, None)
        self._dirty = True
        return decided

    def _decide(self, state: Rig) -> str:
        return KEEP if statistics.median(state.distances) <= self.cfg.keep_distance else ADAPT

    def _served(self, table: VersionStatistics, rig: str) -> Served:
        """An adapted rig's statistics (and its gain curve, if its scans are corrected first). Under the lock."""
        measured = table.rigs[rig]
        blend = Moments.pooled([table.prior, measured]) if table.prior.scans > 0 else measured
        state = self._rigs.get(rig)
        gain = state.gain if state is not None else None
        return Served("rig", int(round(measured.scans)), blend.buffers(table.device), rig, gain,
                      state.gain_scans if state is not None and gain is not None else 0)

    @staticmethod
    def _distance(table: VersionStatistics, scan: np.ndarray | Tensor, windowed: bool = False,
                  gain: GainCurve | None = None) -> float:
        """A scan's drift distance under the version's own statistics: the encoder's summary as the server
        computes it, on the measuring copy (``encoder_summary`` leaves it in eval mode; its BatchNorm layers go
        back to measuring after). ``windowed``: ``scan`` is already a windowed (1, C, H, W) tensor. Only the
        thread that owns the table runs it."""
        assert table.references is not None
        x = scan if windowed else RigNormaliser._normalised(table, scan, gain)
        try:
            summary = encoder_summary(table.twin, x, table.stride)
        finally:
            for _, layer in batchnorm_layers(table.twin):
                layer.train()
        return table.references.distance(summary[0].double().cpu().numpy())[0]

    @staticmethod
    def _raw(table: VersionStatistics, scan: np.ndarray) -> Tensor:
        # a copy: served scans are read-only views of the request
        return torch.tensor(as_channels(scan), dtype=torch.float32)[None].to(table.device)

    @staticmethod
    def _normalised(table: VersionStatistics, scan: np.ndarray, gain: GainCurve | None = None) -> Tensor:
        """As the server normalises the scan (corrected by ``gain`` first, if given)."""
        raw = RigNormaliser._raw(table, scan)
        return window_intensities(raw if gain is None else undo(raw, gain))

    @staticmethod
    def _measure(table: VersionStatistics, scan: np.ndarray, gain: GainCurve | None = None) -> Moments:
        return measure(table.twin, pad_to_multiple(RigNormaliser._normalised(table, scan, gain), table.stride))

    # ---- persistence
    def _maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        """Write decisions, reservoirs and the live version's statistics (atomically) to ``state_dir``."""
        if self.cfg.state_dir is None or not self.cfg.enabled:
            return
        with self._lock:
            table = self._versions.get(self._live)
            state = {"version": self._live, "rigs": {
                rig: {"decision": s.decision, "distances": list(s.distances),
                      "gain": s.gain.to_state() if s.gain is not None else None, "gain_scans": s.gain_scans,
                      "reservoir": [torch.from_numpy(np.array(a)) for a in s.reservoir],
                      "moments": table.rigs[rig].to_state() if table is not None and rig in table.rigs else None}
                for rig, s in self._rigs.items()}}
            self._dirty = False
            self._saved_at = time.monotonic()
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.cfg.state_dir / STATE_FILE
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(path)

    def restore(self, live: LoadedModel) -> None:
        """Read the saved state (before serving starts) and make ``live``'s statistics: the saved ones when
        they were made by this very version, else re-estimated from the reservoirs."""
        path = self.cfg.state_dir / STATE_FILE if self.cfg.state_dir is not None else None
        if path is None or not path.exists() or not self.cfg.enabled:
            self.prepare(live)
            self.follow(live.version)
            return
        try:
            state = torch.load(path, weights_only=True)
            rigs = {rig: Rig(decision=s["decision"] if s["decision"] in DECISIONS else PENDING,
                             distances=[float(d) for d in s["distances"]],
                             gain=GainCurve.from_state(s["gain"]) if s.get("gain") else None,
                             gain_scans=int(s.get("gain_scans", 0))) for rig, s in state["rigs"].items()}
            for rig, s in state["rigs"].items():
                for tensor in s["reservoir"]:
                    rigs[rig].keep(tensor.numpy(), self.cfg)
        except Exception as exc:  # noqa: BLE001 - a damaged state file costs the rigs their history, not the server
            log.error("could not read the rigs' statistics from %s (%r); every rig starts over", path, exc)
            self.prepare(live)
            self.follow(live.version)
            return
        with self._lock:
            self._rigs = rigs
        saved_version = int(state["version"])
        if saved_version == live.version and not live.untrained:
            self.prepare_from_saved(live, {rig: s["moments"] for rig, s in state["rigs"].items()})
        else:
            self.prepare(live)
        self.follow(live.version)
        log.info("restored the normalisation statistics of %d rig(s) from %s", len(rigs), path)

    def prepare_from_saved(self, loaded: LoadedModel, saved: dict[str, dict | None]) -> None:
        table = self._table(loaded)
        with self._lock:
            self._carry_gains(table)
            for rig, moments in saved.items():
                state = self._rigs.get(rig)
                if moments is not None and state is not None and state.decision != KEEP:
                    table.rigs[rig] = Moments.from_state(moments)
                    if state.decision == ADAPT:
                        table.served[rig] = self._served(table, rig)
            self._versions[loaded.version] = table
