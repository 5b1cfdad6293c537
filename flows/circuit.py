"""A circuit breaker per pool: after repeated batch failures, stop sending work for a while.

Closed: work flows. After ``failure_threshold`` consecutive failed batches (transient errors, not
bad input) it opens: the router treats the pool as unavailable and applies the fallback policy.
After ``reset_seconds`` it half-opens: one batch is let through; success closes it again.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Thread-safe consecutive-failure circuit breaker.

    Args:
        failure_threshold: Consecutive failures that open the circuit.
        reset_seconds: How long it stays open before letting one batch through.
    """

    def __init__(self, failure_threshold: int = 5, reset_seconds: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        """The current state."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> State:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a batch may go to the pool now (half-open lets exactly one through)."""
        with self._lock:
            state = self._state_locked()
            if state == "closed":
                return True
            if state == "half_open" and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        """A batch succeeded: close the circuit."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        """A batch failed for a reason other than bad input."""
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= self.failure_threshold or self._opened_at is not None:
                self._opened_at = time.monotonic()
