"""What the server watches on every served scan: doubt and drift per rig, and which scans go to review."""

from __future__ import annotations

import numpy as np

from weldstream.features import stage_channels
from weldstream.server.drift import DriftConfig, DriftMonitor, DriftReading
from weldstream.server.inference import Prediction
from weldstream.server.metrics import OTHER_RIG, UNNAMED_RIG, RigLabels, ServerMetrics
from weldstream.server.model_slot import ModelSlot
from weldstream.server.review import ReviewPublisher
from weldstream.server.rig_normalisation import RigNormaliser

NO_DRIFT = DriftReading(0.0, 0.0, False, False)


class ScanWatch:
    """Called by both services after a scan is answered; everything here is cheap and never waits (the
    rig's normalisation statistics are measured on their own thread)."""

    def __init__(self, slot: ModelSlot, metrics: ServerMetrics, review_doubt: float, drift: DriftConfig,
                 review: ReviewPublisher | None = None, normaliser: RigNormaliser | None = None) -> None:
        self._slot = slot
        self._normaliser = normaliser
        self._metrics = metrics
        self._review_doubt = review_doubt
        self._review = review
        self._labels = RigLabels()
        self.drift = DriftMonitor(drift)

    def rig_label(self, rig_id: str) -> str:
        """The bounded label a rig's metrics, drift and normalisation statistics are kept under."""
        return self._labels(rig_id)

    def observe(self, scan_id: str, rig_id: str, scan: np.ndarray, prediction: Prediction) -> DriftReading:
        rig = self._labels(rig_id)  # bounded: metrics and drift state per label, never per raw id
        self._metrics.scan_doubt.labels(rig).observe(prediction.doubt)
        for region in prediction.regions:
            self._metrics.region_doubt.labels(rig).observe(region.doubt)
        reading = self._drift(rig, prediction)
        reasons = tuple(name for name, crossed in (("doubt", prediction.doubt >= self._review_doubt),
                                                   ("drift", reading.drifting)) if crossed)
        if reasons and self._review is not None:
            self._review.offer(scan_id, rig_id, scan, prediction, reading.score, reasons)
        if self._normaliser is not None and rig not in (OTHER_RIG, UNNAMED_RIG) and prediction.version == \
                self._slot.current().version:
            # a distance says whether the rig looks like a learned domain only under the version's statistics
            measured = prediction.normalisation.source == "version" and self.drift.references is not None
            self._normaliser.observe(rig, scan, reading.distance if measured else None, reading.event)
        return reading

    def _drift(self, rig: str, prediction: Prediction) -> DriftReading:
        live = self._slot.current()
        if prediction.features is None or prediction.version != live.version:
            return NO_DRIFT  # made by a version just swapped out: its features mean nothing to the new references
        self.drift.follow(live.version, live.manifest, stage_channels(live.module))
        reading = self.drift.observe(rig, prediction.features)
        self._metrics.drift_score.labels(rig).set(reading.score)
        if reading.event:
            self._metrics.drift_events.labels(rig).inc()
        return reading
