"""Exponential backoff for a store or service that has stopped answering: 1 s, 2 s, 4 s … up to a cap.

Callers that already have what they need (a server's live version, a learner's checkpointed state) keep
working and only ask again less and less often; the first answer resets the wait.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0


@dataclass
class Backoff:
    first_s: float = FIRST_RETRY_S
    cap_s: float = MAX_RETRY_S
    failures: int = 0  # in a row, since the last answer

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        return self.delay()

    def delay(self) -> float:
        """The wait before the next try: 0 after an answer, else first_s doubled per failure, capped."""
        if not self.failures:
            return 0.0
        return min(self.cap_s, self.first_s * 2 ** min(self.failures - 1, 32))

    def reset(self) -> int:
        """The store answered; returns how many failures in a row came before."""
        failures, self.failures = self.failures, 0
        return failures
