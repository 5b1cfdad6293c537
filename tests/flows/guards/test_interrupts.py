"""Tests of `flows.guards.interrupts`: the run's stop flag, signal handlers, and grace-bounded waits."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import pytest

from flows.guards.interrupts import RunStop, handle_signals


def test_the_first_reason_wins_and_the_grace_counts_down() -> None:
    stop = RunStop(grace_s=0.5)
    assert not stop() and stop.wait_timeout() is None
    assert stop.request("budget") and not stop.request("later")
    assert stop() and stop.reason == "budget" and not stop.interrupted
    first = stop.wait_timeout()
    assert first is not None and 0 < first <= 0.5
    time.sleep(0.6)
    assert stop.wait_timeout() == 0.0


def test_a_real_sigint_sets_the_flag_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    stop = RunStop()
    with handle_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 5
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.interrupted and stop.signal == "SIGINT" and "SIGINT" in (stop.reason or "")
        # A second signal aborts at once, as without DSPex.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before


def test_sigterm_is_handled_too() -> None:
    stop = RunStop()
    with handle_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert stop.signal == "SIGTERM"


def test_outside_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def body() -> None:
        with handle_signals(RunStop()):
            seen.append(signal.getsignal(signal.SIGINT))

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [before]


def test_result_of_waits_while_running_and_only_the_grace_after_a_stop() -> None:
    stop = RunStop(grace_s=0.3)
    with ThreadPoolExecutor(max_workers=1) as pool:
        quick: Future[int] = pool.submit(lambda: (time.sleep(0.4), 7)[1])
        assert stop.result_of(quick) == 7  # no stop: waits as long as it takes
        release = threading.Event()
        slow: Future[None] = pool.submit(release.wait, 10)
        threading.Timer(0.2, stop.request, args=("interrupted",)).start()
        started = time.monotonic()
        with pytest.raises(FuturesTimeout):
            stop.result_of(slow)
        assert 0.4 <= time.monotonic() - started < 2.0  # the stop, then the grace
        release.set()
