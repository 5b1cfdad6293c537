"""Distributed mode: each batch runs on its pool's ``run-step`` deployment, payloads by reference.

The transport (write the rows, ``run_deployment``, watch the flow run and its worker, read the
result back by key, fall back when no worker takes it) is `flows.engine.distributed.RemoteDispatcher`. The
worker runs `flows.engine.executors.run.run_batch`, the same function as local mode, with its own
endpoint breaker, rate limiter (shared across workers through Prefect global concurrency limits)
and retry budget. This executor adds the orchestrator's side of the same semantics:

* it checks the endpoint's breaker before dispatching a batch, and feeds it what the worker's result
  says (transport failures, a worker whose circuit opened), so an outage stops dispatching here too;
* a batch that cannot be dispatched (every attempt crashed, no pool) becomes a result whose rows
  carry the error, like a batch that failed locally; nothing is raised past the engine;
* the worker journals each row as it completes (`flows.guards.resume.BatchJournals`: the store's
  ``worker_rows``, whose key travels as run-step's ``resume_key``), so a re-dispatch after its
  worker died runs only the rows not yet done; the store removes the journals once it keeps the
  result (issue 26).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dspex.exceptions import DSPexError, PoolUnavailableError
from dspex.settings import Settings
from flows.engine.distributed import RemoteDispatcher
from flows.engine.executors.base import BatchExecutor, BatchRequest, ResultStore
from flows.engine.executors.guard import endpoint_of
from flows.guards.circuit import breaker_for, current_run
from tasks import tracing
from tasks.batch import BatchResult, RowError, not_attempted_result

__all__ = ["TRANSPORT_ERROR_TYPES", "RemoteExecutor"]

#: Row error types that are transport failures of the LM endpoint (DSPy's transient LM errors).
TRANSPORT_ERROR_TYPES = frozenset({"LMRateLimitError", "LMServerError", "LMTimeoutError", "LMTransportError"})


class RemoteExecutor(BatchExecutor):
    """Runs batches on the work pools' run-step deployments (see the module docstring).

    Args:
        settings: The orchestrator's settings (the workers build their LM from their own).
        stop: The run's stop flag (checked before each dispatch).
        store: Completed results to reuse and keep.
        dispatcher: The transport (default: a `RemoteDispatcher` on ``settings``).
    """

    def __init__(
        self,
        settings: Settings,
        stop: Callable[[], bool] | None = None,
        store: ResultStore | None = None,
        dispatcher: RemoteDispatcher | None = None,
    ) -> None:
        super().__init__(stop, store)
        self.settings = settings
        self.dispatcher = dispatcher or RemoteDispatcher(settings)
        self.endpoint = endpoint_of(None, settings)

    def availability(self, pool: str) -> tuple[bool, str]:
        return self.dispatcher.availability(pool)

    def max_in_flight(self, pool: str) -> int:
        """Two batches per live worker of ``pool`` (one running, one queued behind it), at least two."""
        status = self.dispatcher.pool_status_cached(pool)
        workers = len(status.live_workers) if status is not None else 0
        return max(2 * workers, 2)

    def slots(self, pool: str) -> int:
        """One slot per live worker of ``pool`` (at least one), so no live worker idles (issue 26)."""
        status = self.dispatcher.pool_status_cached(pool)
        return max(len(status.live_workers) if status is not None else 0, 1)

    def _row_sink(self, request: BatchRequest) -> Any:
        """The journals the worker keeps the batch's rows in (the store's ``worker_rows``), not a
        journal here: the rows complete on the worker."""
        worker_rows = getattr(self.store, "worker_rows", None)
        return worker_rows(request) if worker_rows is not None else None

    def _run(self, request: BatchRequest) -> BatchResult:
        n = len(request.rows)
        if request.step.kind != "module":
            return self._dispatch(request)
        breaker = breaker_for(
            self.endpoint, self.settings.breaker_failure_threshold, self.settings.breaker_reset_seconds
        )
        # A run that did not see the circuit open waits out its cool-down for the probe (issue 20).
        verdict = breaker.admit_batch(run=current_run(), stop=self.stop)
        if verdict is None:
            return not_attempted_result(n, f"circuit open for LM endpoint {self.endpoint}", request.pool)
        result = self._dispatch(request)
        decided = False
        for error in result.errors:
            if error is None:
                breaker.record_success()
                decided = True
            elif error.type in TRANSPORT_ERROR_TYPES:
                breaker.record_failure()
                decided = True
            elif error.not_attempted and error.message.startswith("circuit open"):
                breaker.trip()  # the worker's breaker for this endpoint opened: so does ours
                decided = True
        if verdict == "probe" and not decided:
            breaker.end_probe()
        return result

    def _dispatch(self, request: BatchRequest) -> BatchResult:
        n = len(request.rows)
        resume_key = getattr(request.rows_sink, "key", None)
        journal = {"resume_key": resume_key} if resume_key else {}  # the worker journals its rows
        try:
            with tracing.dispatch_span(str(request.step.name), request.pool, n, request.batch_key) as carrier:
                return self.dispatcher.dispatch(
                    request.step,
                    request.rows,
                    request.pool,
                    request.batch_key,
                    request.timeout_s,
                    trace_context=carrier,
                    **journal,
                )
        except PoolUnavailableError:
            raise  # a policy decision (fallback 'fail'): the run fails fast, as the router would
        except DSPexError as exc:
            error = RowError(type=type(exc).__name__, message=str(exc)[:500], retryable=exc.retryable)
            return _all(n, error, request.pool)


def _all(n: int, error: RowError, pool: str) -> BatchResult:
    return BatchResult(outputs=[None] * n, errors=[error] * n, latencies_ms=[0.0] * n, wall_ms=0.0, pool=pool)
