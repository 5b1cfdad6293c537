"""Local-mode pools: one bounded, process-wide executor per pool (general, optimizer, gpu).

In local mode a pool is a thread pool whose size is the pool's capacity from the settings (general
8, optimizer 2, gpu 4). Every batch routed to a pool submits its examples to that pool's executor,
so the capacity bounds concurrency across all batches and all pipelines in the process, the way a
work pool's concurrency limit does in distributed mode. Tag-based Prefect concurrency limits are
not used for this: a blocked task waits 30 s before it retries (measured; DESIGN.md).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from dspex.settings import Settings, get_settings
from registry.models import PoolType

__all__ = ["POOL_NAMES", "LocalPool", "get_local_pool", "shutdown_local_pools"]

#: The pool names, in one place: the registry's `PoolType` (the CLI, pool setup and the router use this).
POOL_NAMES: tuple[str, ...] = tuple(pool.value for pool in PoolType)
T = TypeVar("T")


class LocalPool:
    """A named, bounded executor (circuit breakers are per LM endpoint: `flows.circuit`).

    Args:
        name: The pool's name.
        capacity: Most work items running at once; 0 means the pool takes no work.
    """

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def availability(self) -> tuple[bool, str]:
        """Whether the pool can take work now, and why not."""
        if self.capacity <= 0:
            return False, "capacity is 0"
        return True, "ok"

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` on the pool's executor, in a copy of the caller's context (so the DSPy
        settings, the run's event scope and the current trace span follow the row into the pool)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=max(self.capacity, 1), thread_name_prefix=f"dspex-{self.name}"
                )
            executor = self._executor
        return executor.submit(contextvars.copy_context().run, fn, *args, **kwargs)

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
