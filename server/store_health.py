"""Whether the weight store answers this server, and how long to wait before asking it again.

The server never fails a request because of the store: while the store does not answer, the live version
is served on, polls back off (1 s, 2 s, 4 s … 30 s instead of --poll-interval), ``inference_store_up`` is 0
and the health service name STORE_SERVICE says NOT_SERVING (every other name keeps its status: the server
still serves). One warning is logged when an outage begins and one info line when it ends.
"""

from __future__ import annotations

import logging
import time

from weldstream.backoff import Backoff
from weldstream.server.metrics import ServerMetrics

log = logging.getLogger(__name__)
# The gRPC health service name that reports the store: SERVING while it answers, NOT_SERVING during an outage.
STORE_SERVICE = "weldstream.store"


class StoreHealth:
    def __init__(self, metrics: ServerMetrics, poll_interval_s: float, where: str,
                 backoff: Backoff | None = None) -> None:
        self._metrics = metrics
        self._poll_interval_s = poll_interval_s
        self._where = where
        self._backoff = backoff or Backoff()
        self._down_since = 0.0
        self.up = True
        metrics.store_up.set(1)

    def next_poll_s(self) -> float:
        """--poll-interval while the store answers; the backoff's wait during an outage."""
        return self._poll_interval_s if self.up else self._backoff.delay()

    def failed(self, error: OSError) -> bool:
        """A poll of the store failed; True if that began an outage."""
        self._metrics.store_errors.inc()
        wait = self._backoff.failed()
        if not self.up:
            log.debug("weight store %s still does not answer (%s); next try in %.0f s", self._where, error, wait)
            return False
        self.up = False
        self._down_since = time.monotonic()
        self._metrics.store_up.set(0)
        log.warning("weight store %s does not answer (%s): serving the live version on, asking again in %.0f s, "
                    "then less often (up to every %.0f s)", self._where, error, wait, self._backoff.cap_s)
        return True

    def answered(self) -> bool:
        """A poll of the store succeeded; True if that ended an outage."""
        if self.up:
            return False
        failures = self._backoff.reset()
        self.up = True
        self._metrics.store_up.set(1)
        log.info("weight store %s answers again after %.0f s (%d failed polls); following it every %.1f s",
                 self._where, time.monotonic() - self._down_since, failures, self._poll_interval_s)
        return True
