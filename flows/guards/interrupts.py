"""Stopping a run cleanly: SIGINT/SIGTERM, budgets, and a grace period for rows already running.

A `RunStop` is the run's stop flag. The executors read it (``stop=`` of
`flows.engine.executors.base.BatchExecutor`): once it is set no batch starts and no row makes another
attempt, while rows already talking to the LM finish. Whoever stops the run says why: a signal
(`handle_signals`), the cost budget (`flows.guards.budget`), the engine (``continue_on_error`` false).

`handle_signals` installs SIGINT and SIGTERM handlers for the duration of a run (main thread only;
elsewhere it does nothing). The first signal sets the flag and logs what happens next; rows still
running get ``interrupt_grace_seconds`` to finish, after which the run stops waiting for them
(`RunStop.wait_timeout`); a second signal aborts at once (``KeyboardInterrupt``, as without
DSPex). The previous handlers are restored afterwards, so Prefect's own SIGTERM bridge and a
user's handler keep working outside the run.

`exit_now` ends a command-line process that still has abandoned LM calls running after its
partial output is written: it stops the embedded Prefect server first (so no server process is
left behind), then exits without joining those threads.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

__all__ = ["RunStop", "exit_now", "handle_signals", "stop_embedded_server"]

logger = logging.getLogger("dspex.interrupts")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL_S = 0.25
T = TypeVar("T")


class RunStop:
    """The stop flag of one run (callable: true once the run is stopping).

    Attributes:
        reason: Why the run stops (None while it runs).
        signal: The signal's name when a signal stopped it.
        grace_s: How long rows already running may take after the stop.
    """

    def __init__(self, grace_s: float = 30.0) -> None:
        self.grace_s = grace_s
        self.reason: str | None = None
        self.signal: str | None = None
        self._at: float | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        return self._event.is_set()

    @property
    def stopped(self) -> bool:
        """Whether the run is stopping."""
        return self._event.is_set()

    @property
    def interrupted(self) -> bool:
        """Whether a signal stopped the run."""
        return self.signal is not None

    def request(self, reason: str, signal_name: str | None = None) -> bool:
        """Stop the run (the first reason wins); True when this call stopped it.

        Args:
            reason: Why, for logs and the summary.
            signal_name: The signal's name, when a signal is why.
        """
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self.signal = signal_name
            self._at = time.monotonic()
            self._event.set()
        return True

    def wait_timeout(self) -> float | None:
        """How long a caller may still wait for rows already running: None (no limit) while the run
        goes on; the rest of the grace period (possibly 0) once it stops."""
        if self._at is None:
            return None
        return max(self._at + self.grace_s - time.monotonic(), 0.0)

    def result_of(self, future: Future[T]) -> T:
        """Wait for ``future`` without limit while the run goes on, and at most the rest of the grace
        period once it stops (checked every quarter second, so a signal is noticed while waiting).

        Raises:
            concurrent.futures.TimeoutError: The run stopped and the grace period ran out first.
        """
        while True:
            left = self.wait_timeout()
            try:
                return future.result(timeout=_POLL_S if left is None else min(_POLL_S, left))
            except FuturesTimeout:
                if left is not None and self.wait_timeout() == 0.0:
                    raise


@contextmanager
def handle_signals(stop: RunStop | None) -> Iterator[RunStop | None]:
    """Turn SIGINT/SIGTERM into ``stop.request`` while the block runs (see the module docstring).

    Args:
        stop: The run's stop flag (None: nothing to do).
    """
    if stop is None or threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.request(f"interrupted by {name}", name):
            # Logged from a signal handler: keep it to one line, no I/O beyond logging.
            logger.warning(
                "%s received: dispatching no more batches; rows already running get up to %.0f s to "
                "finish, then the partial output is written (send it again to abort at once)",
                name,
                stop.grace_s,
            )
            return
        raise KeyboardInterrupt

    previous: dict[int, Any] = {}
    try:
        for sig in _SIGNALS:
            previous[sig] = signal.signal(sig, on_signal)
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_embedded_server() -> None:
    """Stop the Prefect server this process started for itself, if any (idempotent)."""
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:
        return
    for server in list(getattr(server_module.SubprocessASGIServer, "_instances", {}).values()):
        if getattr(server, "running", False):
            try:
                server.stop()
            except Exception as exc:  # the process is ending anyway; say so, do not mask the exit
                logger.debug("could not stop the embedded Prefect server: %s", exc)


def exit_now(code: int) -> None:
    """End the process with ``code`` after an interrupted run, without joining LM calls still running.

    The run's state and partial output are already persisted when this is called. Prefect's queued
    logs are flushed and the embedded server is stopped (an ``os._exit`` skips the ``atexit`` hook
    that would do it), then the process exits at once instead of waiting for abandoned threads.

    Args:
        code: The exit status.
    """
    try:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    except Exception as exc:  # logs are best effort here; the exit must happen
        logger.debug("could not flush Prefect's log worker: %s", exc)
    stop_embedded_server()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
