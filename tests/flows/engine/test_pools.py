"""Local pools: a bounded executor whose queue runs by priority, then first come first served."""

import contextvars
import threading
import time

import pytest

from flows.engine.pools import LocalPool, PriorityExecutor, priority


def _blocked(executor: PriorityExecutor, gate: threading.Event, started: threading.Event) -> None:
    def hold() -> None:
        started.set()
        gate.wait(5)

    executor.submit((0,), hold)
    assert started.wait(5)


def test_queued_work_runs_by_priority_then_in_submission_order():
    executor = PriorityExecutor(1, "test")
    gate, started = threading.Event(), threading.Event()
    _blocked(executor, gate, started)  # the only thread is busy: what follows queues
    ran: list[str] = []
    futures = [
        executor.submit(key, ran.append, name)
        for key, name in [((2, 0), "late-a"), ((1, 5), "mid"), ((2, 0), "late-b"), ((0, 9), "first")]
    ]
    gate.set()
    for future in futures:
        future.result(timeout=5)
    assert ran == ["first", "mid", "late-a", "late-b"]
    executor.shutdown()


def test_capacity_bounds_the_work_running_at_once():
    executor = PriorityExecutor(3, "test")
    running, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    futures = [executor.submit((1,), work) for _ in range(30)]
    for future in futures:
        future.result(timeout=10)
    assert peak[0] == 3
    assert len(executor._threads) == 3
    executor.shutdown()


def test_errors_reach_the_future_and_queued_work_can_be_cancelled():
    executor = PriorityExecutor(1, "test")
    gate, started = threading.Event(), threading.Event()
    _blocked(executor, gate, started)
    failing = executor.submit((1,), lambda: 1 / 0)
    cancelled = executor.submit((1,), lambda: "never")
    assert cancelled.cancel()
    gate.set()
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=5)
    assert cancelled.cancelled()
    executor.shutdown()


def test_shutdown_runs_what_is_queued_and_refuses_more():
    executor = PriorityExecutor(1, "test")
    done: list[int] = []
    futures = [executor.submit((1,), lambda i=i: (time.sleep(0.01), done.append(i))) for i in range(5)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures) and done == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="shutdown"):
        executor.submit((1,), print)


def test_a_pool_runs_work_in_the_callers_context_at_its_priority():
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    pool = LocalPool("general", 1)
    gate, started = threading.Event(), threading.Event()
    pool.submit(lambda: (started.set(), gate.wait(5)))
    assert started.wait(5)
    order: list[str] = []
    var.set("caller")
    with priority((2, 0, 0)):
        later = pool.submit(lambda: order.append("later:" + var.get()))
    with priority((0, 0, 0)):
        sooner = pool.submit(lambda: order.append("sooner:" + var.get()))
    gate.set()
    later.result(timeout=5), sooner.result(timeout=5)
    assert order == ["sooner:caller", "later:caller"]
    pool.shutdown()
