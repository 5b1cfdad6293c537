"""Local-mode pools: one bounded, process-wide executor per pool (general, optimizer, gpu).

In local mode a pool is a thread pool whose size is the pool's capacity from the settings (general
8, optimizer 2, gpu 4). Every batch routed to a pool submits its examples to that pool's executor,
so the capacity bounds concurrency across all batches and all pipelines in the process, the way a
work pool's concurrency limit does in distributed mode. Tag-based Prefect concurrency limits are
not used for this: a blocked task waits 30 s before it retries (measured; DESIGN.md).

Work waiting for a pool's thread runs in priority order, then in the order it was submitted. A
submission takes its priority from the caller's context (`priority`): the same for everything by
default (first come, first served); `flows.engine.streaming` ranks a stream's rows so its first rows come
out early and its earlier steps go first (a slow batch starts as early as it can, and later steps
fill the pool while it runs).
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from dspex.settings import Settings, get_settings
from registry.models import PoolType

__all__ = [
    "POOL_NAMES",
    "LocalPool",
    "PriorityExecutor",
    "get_local_pool",
    "priority",
    "shutdown_local_pools",
]

#: The pool names, in one place: the registry's `PoolType` (the CLI, pool setup and the router use this).
POOL_NAMES: tuple[str, ...] = tuple(pool.value for pool in PoolType)
T = TypeVar("T")

#: The priority of work submitted from this context (lower runs first); equal priorities: FIFO.
_PRIORITY: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "dspex_pool_priority", default=(1, 0, 0)
)


@contextlib.contextmanager
def priority(key: tuple[int, ...]) -> Iterator[None]:
    """Give the pool work submitted inside this block (and in threads and tasks started from it,
    which copy the context) the priority ``key``: lower runs first."""
    token = _PRIORITY.set(key)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


class PriorityExecutor:
    """A bounded thread pool whose queue is ordered by priority, then by submission.

    Threads start as work arrives (up to ``max_workers``) and stay for the life of the executor;
    they are daemon threads, so a process leaving with work still queued does not hang on it.

    Args:
        max_workers: Most work items running at once.
        thread_name_prefix: Names of the threads.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self._max = max(max_workers, 1)
        self._prefix = thread_name_prefix
        self._queue: list[
            tuple[tuple[int, ...], int, Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]
        ] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work and not yet woken
        self._closed = False

    def submit(self, key: tuple[int, ...], fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` at priority ``key``; returns its future.

        Raises:
            RuntimeError: The executor was shut down.
        """
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot schedule new work after shutdown")
            heapq.heappush(self._queue, (key, next(self._order), future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1
                self._ready.notify()
            elif len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    if self._closed:
                        return
                    self._idle += 1
                    self._ready.wait()
                _, _, future, fn, args, kwargs = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            del future, fn, args, kwargs  # nothing of the finished item outlives it here

    def shutdown(self, wait: bool = True) -> None:
        """Take no more work; queued work still runs. ``wait``: until every thread is done."""
        with self._ready:
            self._closed = True
            self._idle = 0
            self._ready.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class LocalPool:
    """A named, bounded executor (circuit breakers are per LM endpoint: `flows.guards.circuit`).

    Args:
        name: The pool's name.
        capacity: Most work items running at once; 0 means the pool takes no work.
    """

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._executor: PriorityExecutor | None = None
        self._lock = threading.Lock()

    def availability(self) -> tuple[bool, str]:
        """Whether the pool can take work now, and why not."""
        if self.capacity <= 0:
            return False, "capacity is 0"
        return True, "ok"

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` on the pool's executor, in a copy of the caller's context (so the DSPy
        settings, the run's event scope and the current trace span follow the row into the pool),
        at the context's `priority`."""
        with self._lock:
            if self._executor is None:
                self._executor = PriorityExecutor(max(self.capacity, 1), f"dspex-{self.name}")
            executor = self._executor
        return executor.submit(_PRIORITY.get(), contextvars.copy_context().run, fn, *args, **kwargs)

    def shutdown(self) -> None:
        """Stop the executor (running work finishes first)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


_pools: dict[tuple[str, int], LocalPool] = {}
_pools_lock = threading.Lock()


def get_local_pool(name: str, settings: Settings | None = None) -> LocalPool:
    """The process-wide pool called ``name`` at the capacity the settings give."""
    if name not in POOL_NAMES:
        raise ValueError(f"unknown pool {name!r}; pools are {', '.join(POOL_NAMES)}")
    capacity = (settings or get_settings()).pool_capacity(name)
    with _pools_lock:
        pool = _pools.get((name, capacity))
        if pool is None:
            pool = _pools[(name, capacity)] = LocalPool(name, capacity)
        return pool


def shutdown_local_pools() -> None:
    """Stop every local pool (tests, and the end of a CLI command)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown()
