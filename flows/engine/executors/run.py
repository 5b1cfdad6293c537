"""`run_batch`: the one function that runs a batch on a pool, in local mode and on a worker alike.

The local executor calls it inside a Prefect task on the orchestrator; the ``run-step`` flow calls it
on the worker that took the batch. Module steps go through `tasks.batch.execute_module_batch` with
the endpoint's guard (breaker, limiter, stop) and the retry budget; retrieve steps run one encode
call on the pool, and any failure becomes an error of each row of the batch (in both modes alike).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any

from dspex.exceptions import is_retryable
from dspex.settings import Settings
from flows.engine.executors.guard import guard_for
from flows.engine.pools import get_local_pool
from tasks import tracing
from tasks.batch import BatchResult, RowError, execute_module_batch, not_attempted_result
from tasks.retry import RetryPolicy

__all__ = ["run_batch"]


def run_batch(
    step: Any,
    rows: list[dict[str, Any]],
    *,
    pool: str,
    settings: Settings,
    lm: Any = None,
    timeout_s: float | None = None,
    stop: Callable[[], bool] | None = None,
    on_row_failed: Callable[[BaseException], None] | None = None,
    shared_limits: bool | None = None,
    trace_rows: frozenset[int] | None = None,
    on_row_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> BatchResult:
    """Run one batch of a module or retrieve step on this process's pool ``pool``.

    Args:
        step: The module or retrieve step.
        rows: The batch's rows.
        pool: The pool (its capacity bounds the rows running at once).
        settings: The effective settings (retries, breaker, rate limits).
        lm: The LM for module steps (None: built from ``settings``).
        timeout_s: Longest the batch may take.
        stop: The run's stop flag (rows not yet tried when it turns true are not attempted).
        on_row_failed: Called with each row's final error.
        shared_limits: Share the LM rate limits across processes (a worker: True; default: by mode).
        trace_rows: In a traced run, the rows to trace in full (default: the run's sampler chooses).
        on_row_done: Called with each module row's index and outputs as it completes (resume keeps
            rows this way, so a killed process loses only the rows in flight).

    Returns:
        The batch's result; it never raises for a row's or an LM's failure.
    """
    with tracing.batch_span(str(step.name), pool, len(rows), trace_rows) as trace:
        result = _run_batch(
            step, rows, pool, settings, lm, timeout_s, stop, on_row_failed, shared_limits, on_row_done
        )
        if trace is not None:
            trace.finish(result)
    return result


def _run_batch(
    step: Any,
    rows: list[dict[str, Any]],
    pool: str,
    settings: Settings,
    lm: Any,
    timeout_s: float | None,
    stop: Callable[[], bool] | None,
    on_row_failed: Callable[[BaseException], None] | None,
    shared_limits: bool | None,
    on_row_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> BatchResult:
    start = time.perf_counter()
    stop = stop or (lambda: False)
    local = get_local_pool(pool, settings)
    if step.kind == "retrieve":
        return _retrieve(step, rows, local, pool, timeout_s, start)
    if lm is None:
        from tasks.lm import build_lm

        lm = build_lm(settings)
    guard = guard_for(step, lm, settings, stop, on_row_failed, shared_limits)
    if guard is None:
        from flows.engine.executors.guard import endpoint_of

        return not_attempted_result(
            len(rows), f"circuit open for LM endpoint {endpoint_of(lm, settings)}", pool, start
        )
    result = execute_module_batch(
        step,
        rows,
        lm=lm,
        submit=local.submit,
        guard=guard,
        policy=RetryPolicy.from_settings(settings),
        timeout_s=timeout_s,
        pool=pool,
        on_row_done=on_row_done,
    )
    if guard.probe and guard.attempts == 0:
        guard.breaker.end_probe()  # the probe never reached the LM: let the next batch probe
    return result


def _retrieve(
    step: Any, rows: list[dict[str, Any]], local: Any, pool: str, timeout_s: float | None, start: float
) -> BatchResult:
    from tasks.retrieve import retrieve_batch
    from tasks.rows import get_field

    queries = [get_field(row, step.retrieve, None) for row in rows]
    future = local.submit(retrieve_batch, step, queries)
    try:
        passages, per_query_ms = future.result(timeout=timeout_s)
    except FuturesTimeout:
        started = not future.cancel()
        if not started:
            return not_attempted_result(
                len(rows), f"the batch timeout of {timeout_s:.0f} s ran out", pool, start
            )
        error = RowError(
            type="TimeoutError", message=f"the batch timeout of {timeout_s:.0f} s ran out", retryable=True
        )
        return _all_failed(len(rows), error, pool, start)
    except Exception as exc:  # the whole batch failed: each of its rows carries the error
        message = str(exc) or type(exc).__name__
        return _all_failed(
            len(rows),
            RowError(type=type(exc).__name__, message=message[:500], retryable=is_retryable(exc)),
            pool,
            start,
        )
    return BatchResult(
        outputs=[{step.output: found} for found in passages],
        errors=[None] * len(rows),
        latencies_ms=[per_query_ms] * len(rows),
        wall_ms=(time.perf_counter() - start) * 1000,
        pool=pool,
    )


def _all_failed(n: int, error: RowError, pool: str, start: float) -> BatchResult:
    return BatchResult(
        outputs=[None] * n,
        errors=[error] * n,
        latencies_ms=[0.0] * n,
        wall_ms=(time.perf_counter() - start) * 1000,
        pool=pool,
    )
