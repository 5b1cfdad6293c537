"""The one batch-executor interface: where a pool is available, and running a batch on it.

The engine cuts each module or retrieve step into batches and hands each to a `BatchExecutor`:

* `flows.engine.executors.local.LocalExecutor`: the in-process bounded pools (local mode);
* `flows.engine.executors.remote.RemoteExecutor`: the pools' ``run-step`` deployments (distributed mode),
  whose workers call the very same `flows.engine.executors.run.run_batch` as local mode.

Both give the same semantics: rows are retried only by `tasks.retry.RetryPolicy`, the circuit
breaker and rate limiter of the LM endpoint guard every attempt, a batch timeout fails the rows it
cuts off, and a batch that cannot run at all yields a result whose rows are all *not attempted*,
never a lost batch.

Resume hooks: an executor may hold a `ResultStore`. `BatchExecutor.run` asks it for a completed
result of the request before running anything, and hands it every fresh result afterwards. A store
that also has ``row_sink(request)`` gets each row as it completes (``BatchRequest.rows_sink``), so a
process killed mid-batch loses only the rows in flight (issues 25, 26). An executor whose rows run
elsewhere picks its own sink (`BatchExecutor._row_sink`: the remote one lets the worker journal).
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.batch import BatchResult, not_attempted_result

__all__ = ["BatchExecutor", "BatchRequest", "ResultStore"]


@dataclass(frozen=True)
class BatchRequest:
    """One batch of one step, as the engine asks for it.

    Attributes:
        step: The module or retrieve step.
        rows: The batch's rows (plain dicts).
        pool: The pool the router chose.
        batch_key: The batch's identity (step definition, inputs read, LM identity).
        timeout_s: Longest the batch may take on its pool.
        index: The batch's number within its step (for run names).
        rows_sink: Keeps each row's outputs as it completes (``add(index, outputs)``), when the
            executor's store gave one; executors that run rows here pass ``rows_sink.add`` down.
    """

    step: Any
    rows: list[dict[str, Any]]
    pool: str
    batch_key: str
    timeout_s: float | None = None
    index: int = 0
    rows_sink: Any = None


class ResultStore(Protocol):
    """Where completed batch results are kept between runs (resume)."""

    def lookup(self, request: BatchRequest) -> BatchResult | None:
        """A stored result for ``request``, or None."""

    def store(self, request: BatchRequest, result: BatchResult) -> None:
        """Keep ``result`` (rows that failed or were not attempted are the store's to skip)."""


class BatchExecutor(ABC):
    """Runs batches on pools (see the module docstring).

    Args:
        stop: When it returns true, no new batch starts and no row makes another attempt.
        store: Completed results to reuse, and to keep (None: no reuse).
    """

    def __init__(self, stop: Callable[[], bool] | None = None, store: ResultStore | None = None) -> None:
        self.stop: Callable[[], bool] = stop or (lambda: False)
        self.store = store

    @abstractmethod
    def availability(self, pool: str) -> tuple[bool, str]:
        """Whether ``pool`` can take work now, and why not."""

    def max_in_flight(self, pool: str) -> int:
        """How many batches of one step to have running at once on ``pool``.

        Locally, rows queue in the pool anyway, so many batches may be in flight. Remotely, only
        what the workers can start: a batch dispatched is a batch that cannot be held back when the
        circuit opens or the run stops.
        """
        return 32

    def slots(self, pool: str) -> int:
        """How many batches ``pool`` runs side by side: batch sizing gives each slot one at least.

        Locally, every batch's rows share the pool's one bounded executor: one slot.
        """
        return 1

    @abstractmethod
    def _run(self, request: BatchRequest) -> BatchResult:
        """Run the batch (no reuse, no stop check: `run` does those)."""

    def run(self, request: BatchRequest) -> BatchResult:
        """Run one batch and return its result: every row completed, failed or not attempted."""
        start = time.perf_counter()
        if self.stop():
            return not_attempted_result(
                len(request.rows), "the run stopped before this batch started", start=start
            )
        if self.store is not None:
            found = self.store.lookup(request)
            if found is not None:
                return found.model_copy(update={"reused": len(request.rows)})
        sink = self._row_sink(request)
        if sink is not None:
            request = dataclasses.replace(request, rows_sink=sink)
        try:
            result = self._run(request)
            if self.store is not None:
                self.store.store(request, result)
        finally:
            if sink is not None:
                sink.close(remove=False)  # a no-op once the store kept the result (and removed it)
        return result

    def _row_sink(self, request: BatchRequest) -> Any:
        """What keeps ``request``'s rows as they complete (the store's ``row_sink``; None: nothing).

        Whatever it is, the store's ``store`` closes it with ``remove=True`` once the result is kept.
        """
        row_sink = getattr(self.store, "row_sink", None)
        return row_sink(request) if row_sink is not None else None

    def close(self) -> None:  # noqa: B027  (optional hook: most executors hold nothing)
        """Release what the executor holds (nothing by default)."""
