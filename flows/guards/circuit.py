"""A circuit breaker per LM endpoint (model + API base), shared by every batch in the process.

It counts *transport* failures only: attempts that failed with one of DSPy's transient LM errors
(rate limited after our retries, 5xx, timeouts, connection errors; ``dspy.is_retryable_lm_error``).
Bad input, an unparseable answer, a spec error (ReAct without tools) never count: they say nothing
about the endpoint.

* **closed**: work flows; ``failure_threshold`` consecutive transport failures open it.
* **open**: no batch is admitted and no row starts another attempt; a run ends at once with the rows
  it could not try marked ``not_attempted`` (retryable, so a re-run picks them up).
* **half-open** (``reset_seconds`` after opening): exactly one *probe batch* is admitted; its first
  success closes the circuit, its first transport failure opens it again.

**A new run waits instead of giving up** (issue 20). The breaker lives in this process only (nothing is
persisted: a re-run in a new process starts closed and finds out for itself), but this process may be
long-lived: the warm runner serves every ``dspex run``, a notebook calls ``run_pipeline`` twice, a
distributed run's orchestrator runs again. A batch names its run (``admit_batch(run=...)``: the Prefect flow run it
belongs to). The runs that were admitted since the circuit last closed *witnessed* the failures that
opened it, and their batches are refused at once as above (an outage run ends fast). A batch of any
other run, finding the circuit open, waits out the rest of the cool-down (logged once per run, with
the time), competes for the half-open probe, and waits for the probe's verdict: success admits it,
a failed probe refuses it (its run then witnessed that failure). The wait ends when the run stops.

Every state change is logged and passed to the listeners (`add_listener`), so telemetry can emit
``dspex.breaker.opened`` / ``dspex.breaker.closed`` events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from prefect.context import FlowRunContext

__all__ = [
    "BreakerListener",
    "CircuitBreaker",
    "State",
    "add_listener",
    "breaker_for",
    "current_run",
    "is_transport_failure",
    "remove_listener",
    "reset_breakers",
]

State = Literal["closed", "open", "half_open"]
#: Called as ``listener(endpoint, old_state, new_state)`` on every state change.
BreakerListener = Callable[[str, State, State], None]

logger = logging.getLogger("dspex.circuit")
_listeners: list[BreakerListener] = []


def add_listener(listener: BreakerListener) -> None:
    """Call ``listener(endpoint, old, new)`` on every breaker state change in this process."""
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: BreakerListener) -> None:
    """Stop calling ``listener``."""
    if listener in _listeners:
        _listeners.remove(listener)


#: The flow a worker runs per batch (`flows.engine.step_runner.run_step`): one batch of another process's run.
_WORKER_FLOW = "run-step"


def current_run() -> str | None:
    """The id of the Prefect flow run this thread works for (a batch's run), or None.

    The engine copies its context into every dispatch thread and Prefect copies it into task runs,
    so each batch of a pipeline run sees that run's id. None outside a flow run, and on a worker: its
    run-step run is one batch of the orchestrator's run, which a worker cannot name without API
    calls; there the breaker refuses while open, as before, and the orchestrator (whose breaker opened
    with the worker's, from the same results) is the one that waits and probes.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    if context.flow is not None and context.flow.name == _WORKER_FLOW:
        return None
    return str(context.flow_run.id)


def is_transport_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an error it wraps) is a transient LM transport failure.

    Only DSPy's typed transient LM errors count (``dspy.is_retryable_lm_error``): rate limits,
    server errors, timeouts and connection failures. DSPex's own errors (bad input, a batch timeout,
    an open circuit) never do.
    """
    from dspy.utils.exceptions import is_retryable_lm_error

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Exception) and is_retryable_lm_error(current):
            return True
        current = current.__cause__ or current.__context__
    return False


class CircuitBreaker:
    """Thread-safe consecutive-failure breaker for one endpoint (see the module docstring).

    Args:
        name: The endpoint it guards (for logs and listeners).
        failure_threshold: Consecutive transport failures that open it.
        reset_seconds: How long it stays open before admitting one probe batch.
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = max(int(failure_threshold), 1)
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a probe decided, or the circuit closed
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._reported: State = "closed"
        self._runs_since_close: set[str] = set()  # runs admitted since the circuit last closed
        self._witnesses: set[str] = set()  # those runs, when it last opened: they saw it fail
        self._told: set[tuple[float, str]] = set()  # (open period, run) already told of the wait

    @property
    def state(self) -> State:
        """The current state."""
        with self._lock:
            state = self._state_locked()
            change = self._note_locked(state)
        self._announce(change)
        return state

    def admit_batch(
        self, run: str | None = None, stop: Callable[[], bool] | None = None
    ) -> Literal["closed", "probe"] | None:
        """Whether a new batch may start: ``"closed"``, ``"probe"`` (the one half-open probe), or None.

        Args:
            run: The run the batch belongs to. A run that did not witness the circuit opening waits
                (see the module docstring) instead of being refused; None: never wait.
            stop: The run's stop flag: a waiting batch gives up (None) once it is true.
        """
        while True:
            with self._changed:
                state = self._state_locked()
                change = self._note_locked(state)
                verdict: Literal["closed", "probe"] | None = None
                wait = 0.0
                if state == "closed":
                    verdict = "closed"
                elif state == "half_open" and not self._probing:
                    self._probing = True
                    verdict = "probe"
                elif run is not None and run not in self._witnesses:
                    wait = self._wait_locked(state, run)
                if verdict is not None and run is not None:
                    self._runs_since_close.add(run)
                if verdict is None and wait > 0 and not (stop is not None and stop()):
                    self._changed.wait(timeout=wait)
                    waited = True
                else:
                    waited = False
            self._announce(change)
            if not waited:
                return verdict

    def allows_attempt(self, probe: bool = False) -> bool:
        """Whether a row of an admitted batch may make another attempt now."""
        with self._lock:
            state = self._state_locked()
            return state == "closed" or (probe and state == "half_open" and self._probing)

    def record_success(self) -> None:
        """An LM attempt succeeded: reset the count, close the circuit."""
        with self._changed:
            self._failures = 0
            self._opened_at = None
            self._probing = False
            self._runs_since_close.clear()
            self._witnesses.clear()
            self._told.clear()
            change = self._note_locked("closed")
            self._changed.notify_all()
        self._announce(change)

    def record_failure(self) -> None:
        """An LM attempt failed with a transport failure."""
        with self._changed:
            self._failures += 1
            if self._opened_at is not None or self._failures >= self.failure_threshold:
                # A failed probe (or any failure while open) restarts the open period.
                self._open_locked()
            change = self._note_locked(self._state_locked())
        self._announce(change)

    def trip(self) -> None:
        """Open the circuit now (another process's breaker for this endpoint opened)."""
        with self._changed:
            self._failures = max(self._failures, self.failure_threshold)
            self._open_locked()
            change = self._note_locked(self._state_locked())
        self._announce(change)

    def end_probe(self) -> None:
        """A probe batch ended without deciding (no row reached the LM): admit another probe."""
        with self._changed:
            self._probing = False
            self._changed.notify_all()

    # --- internals ------------------------------------------------------------------------------

    def _open_locked(self) -> None:
        self._opened_at = self._clock()
        self._probing = False
        # Every run admitted since the circuit last closed saw this happen: theirs end now.
        self._witnesses = set(self._runs_since_close)
        self._changed.notify_all()

    def _wait_locked(self, state: State, run: str) -> float:
        """How long a batch of ``run`` (no witness) waits before looking again; says so once."""
        if state == "half_open":
            return 0.25  # a probe is out: its verdict wakes us (the timeout only bounds a stop check)
        assert self._opened_at is not None  # open
        remaining = self.reset_seconds - (self._clock() - self._opened_at)
        if (self._opened_at, run) not in self._told:
            self._told.add((self._opened_at, run))
            logger.warning(
                "circuit for LM endpoint %s is open (an earlier run's transport failures); waiting "
                "%.1f s for its cool-down, then sending one probe batch",
                self.name,
                remaining,
            )
        return max(min(remaining, 0.25), 0.001)

    def _state_locked(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def _note_locked(self, state: State) -> tuple[State, State] | None:
        if state == self._reported:
            return None
        old, self._reported = self._reported, state
        return old, state

    def _announce(self, change: tuple[State, State] | None) -> None:
        if change is None:
            return
        old, new = change
        if new == "open":
            logger.warning(
                "circuit for LM endpoint %s opened after %d consecutive transport failures; "
                "no new LM work for %.0f s",
                self.name,
                self.failure_threshold,
                self.reset_seconds,
            )
        else:
            logger.info("circuit for LM endpoint %s: %s -> %s", self.name, old, new)
        for listener in list(_listeners):
            try:
                listener(self.name, old, new)
            except Exception:  # a listener must never break the run it observes
                logger.exception("circuit listener %r failed", listener)


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(endpoint: str, failure_threshold: int = 5, reset_seconds: float = 30.0) -> CircuitBreaker:
    """The process-wide breaker of ``endpoint`` (created with these parameters on first use)."""
    with _breakers_lock:
        breaker = _breakers.get(endpoint)
        if breaker is None:
            breaker = _breakers[endpoint] = CircuitBreaker(endpoint, failure_threshold, reset_seconds)
        return breaker


def reset_breakers() -> None:
    """Forget every breaker (tests; a long-lived process after a provider incident)."""
    with _breakers_lock:
        _breakers.clear()
