"""Pipelined execution: rows move on to the next step, and come out, as soon as they are ready.

The barrier engine (`flows.engine.core.run_steps` over all rows) runs step 1 on every row, then step 2 on
every row, so one slow batch holds back the whole pipeline and nobody sees a row before the end.
`run_pipelined` cuts the rows into chunks and runs each chunk through the step chain on its own
(``run_steps(steps, chunk, ctx)``, the same engine), concurrently: a chunk goes to step 2 the moment
its step 1 is done. Only a step that needs every row (one served by the optimizer pool, or one in
provider batch mode, whose round holds every waiting row) is a barrier: the chunks meet there, the step runs once over all rows, and chunking resumes after it.
Completed chunks are handed to a sink as they finish; the returned rows keep the input order.

`flows.stream.stream_pipeline` hands the run a sink (`STREAM_SINK`) and a cancel event
(`STREAM_CANCEL`) through context variables, since a callable cannot be a flow parameter.
"""

from __future__ import annotations

import contextvars
import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from flows.engine.context import EngineContext, StepRecord
from flows.engine.core import run_steps
from flows.engine.pools import priority
from flows.engine.spec import ModuleStep
from tasks.rows import ERROR_FIELD

__all__ = [
    "STREAM_CANCEL",
    "STREAM_SINK",
    "Sink",
    "chunk_bounds",
    "default_chunk_rows",
    "is_barrier",
    "run_pipelined",
]

#: Receives each completed chunk of rows (in completion order).
Sink = Callable[[list[dict[str, Any]]], None]

#: The sink a streaming caller set for this run (a callable cannot be a flow parameter: they are stored).
STREAM_SINK: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("dspex_stream_sink", default=None)
#: Set by a `flows.stream.PipelineStream` whose consumer stopped: no new chunk or step starts.
STREAM_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "dspex_stream_cancel", default=None
)
_MAX_CONCURRENT_CHUNKS = 64
_FIRST_CHUNK_ROWS = 8


def is_barrier(step: Any, batch_mode: Any = None) -> bool:
    """Whether a step needs every row at once, so chunks meet before it: an optimizer-pool module, or
    a step that goes through the provider's batch API (``batch_mode``, a `BatchMode`: one batch round
    holds every waiting row, not one batch per chunk)."""
    if batch_mode is not None and batch_mode.applies(step):
        return True
    if getattr(step, "pool", None) == "optimizer":
        return True
    if isinstance(step, ModuleStep):
        from dspex.exceptions import UnknownModuleError
        from registry import get_module

        try:
            return str(get_module(step.module).pool_type.value) == "optimizer"
        except (UnknownModuleError, AttributeError):
            return False
    return False


def default_chunk_rows(n_rows: int) -> int:
    """Rows per chunk: about 32 chunks, at least 8 and at most 500 rows each."""
    return max(8, min(500, -(-n_rows // 32))) if n_rows else 1


def run_pipelined(
    steps: list[Any],
    rows: list[dict[str, Any]],
    ctx: EngineContext,
    *,
    chunk_rows: int | None = None,
    sink: Sink | None = None,
    cancel: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Run ``steps`` over ``rows`` chunk by chunk, without barriers between row-wise steps.

    Args:
        steps: The pipeline's steps.
        rows: The rows (extended in place; returned in input order).
        ctx: The engine context; its records get one merged record per step.
        chunk_rows: Rows per chunk (default: `default_chunk_rows`).
        sink: Called with each chunk once it has passed the last step (completion order).
        cancel: When set, no further chunk or step starts.
    """
    sink = sink or STREAM_SINK.get()
    cancel = cancel or STREAM_CANCEL.get()
    size = chunk_rows or default_chunk_rows(len(rows))
    segments = _segments(steps, ctx.batch_mode)
    for n, (barrier, segment) in enumerate(segments):
        last = n == len(segments) - 1
        if ctx.stop or (cancel is not None and cancel.is_set()):
            break
        if barrier:
            run_steps(segment, rows, ctx)
            if last and sink is not None:
                sink(list(rows))
        else:
            _run_chunked(segment, rows, ctx, size, sink if last else None, cancel)
    return rows


def _segments(steps: list[Any], batch_mode: Any = None) -> list[tuple[bool, list[Any]]]:
    segments: list[tuple[bool, list[Any]]] = []
    for step in steps:
        if is_barrier(step, batch_mode):
            segments.append((True, [step]))
        elif segments and not segments[-1][0]:
            segments[-1][1].append(step)
        else:
            segments.append((False, [step]))
    return segments


def chunk_bounds(n_rows: int, size: int) -> list[tuple[int, int]]:
    """Chunk boundaries: the first chunks ramp up (8, 16, 32, ... rows) to ``size``, so the first
    rows come out after a small chunk's time, not a full chunk's; the rest are ``size`` rows."""
    bounds = []
    start, current = 0, min(size, _FIRST_CHUNK_ROWS)
    while start < n_rows:
        end = min(start + current, n_rows)
        bounds.append((start, end))
        start, current = end, min(current * 2, size)
    return bounds


def _run_chunked(
    steps: list[Any],
    rows: list[dict[str, Any]],
    ctx: EngineContext,
    size: int,
    sink: Sink | None,
    cancel: threading.Event | None,
) -> None:
    bounds = chunk_bounds(len(rows), size)
    chunks = [rows[start:end] for start, end in bounds]
    # The ramp-up: the leading chunks smaller than `size` (a short last chunk is not one of them).
    ramp = next((n for n, (start, end) in enumerate(bounds) if end - start >= size), len(bounds))
    contexts = [
        dataclasses.replace(ctx, records=[], stop=False, batches_total=0, batches_done=0, on_progress=None)
        for _ in chunks
    ]
    parent = contextvars.copy_context()  # the flow run's context: Prefect tasks submit from it

    # The other chunks start once the first chunk is through its first step: starting 30-odd
    # chunks at once (a task run per batch each) would compete with the first rows for the
    # interpreter. They then queue in the pool by priority (`_rank`).
    opened = threading.Event()
    if ramp == 0:
        opened.set()

    def run(index: int) -> int:
        while index >= ramp and not opened.wait(0.1):
            if ctx.stop or (cancel is not None and cancel.is_set()):
                break
        try:
            for position, step in enumerate(steps):
                if ctx.stop or (cancel is not None and cancel.is_set()):
                    contexts[index].stop = True
                    return index
                with priority(_rank(index, position, ramp=index < ramp)):
                    run_steps([step], chunks[index], contexts[index])
                if index == 0:
                    opened.set()
                if contexts[index].stop:
                    break
            return index
        finally:
            if index == 0:
                opened.set()

    done = 0
    workers = min(len(chunks), _MAX_CONCURRENT_CHUNKS)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dspex-chunk") as executor:
        pending: set[Future[int]] = {executor.submit(parent.copy().run, run, i) for i in range(len(chunks))}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if cancel is not None and cancel.is_set():
                    _stop_all(ctx, contexts)
                for future in finished:
                    index = future.result()
                    done += 1
                    if (contexts[index].stop and not ctx.continue_on_error) or ctx.failures.exceeded:
                        _stop_all(ctx, contexts)  # fail-fast, or one failure past max_errors (issue 24)
                    if sink is not None and not (cancel is not None and cancel.is_set()):
                        sink(chunks[index])
                    if ctx.on_progress is not None:
                        ctx.on_progress(done / len(chunks))
        except BaseException:
            _stop_all(ctx, contexts)
            raise
    ctx.records.extend(_merge([c.records for c in contexts]))
    if not ctx.continue_on_error and any(ERROR_FIELD in row for row in rows):
        ctx.stop = True


def _rank(chunk: int, step: int, *, ramp: bool) -> tuple[int, int, int]:
    """The pool priority of a chunk's rows in one step (lower runs first).

    The ramp-up chunks (`chunk_bounds`' first, smaller chunks) go through every step ahead of everything else, so
    the first rows come out after a few LM calls. After them, earlier steps go first, and earlier
    chunks within a step: every chunk's first step is started as early as it can be (a slow batch
    anywhere starts early, not last), and the later steps of finished chunks fill the pool behind
    it instead of waiting for it, as the barrier engine would.
    """
    if ramp:
        return (0, chunk, step)
    return (1, step, chunk)


def _stop_all(ctx: EngineContext, contexts: list[EngineContext]) -> None:
    ctx.stop = True
    for context in contexts:
        context.stop = True


def _merge(per_chunk: list[list[StepRecord]]) -> list[StepRecord]:
    """One record per step: rows, batches, failures and LM usage summed (the pools that ran them
    united); durations are summed chunk times."""
    merged: dict[str, StepRecord] = {}
    for records in per_chunk:
        for record in records:
            seen = merged.get(record.step)
            if seen is None:
                merged[record.step] = record.model_copy()
                continue
            estimated = (
                None
                if seen.estimated_ms is None or record.estimated_ms is None
                else round(seen.estimated_ms + record.estimated_ms, 1)
            )
            actual = round(seen.actual_ms + record.actual_ms, 1)
            error = abs(estimated - actual) / actual * 100 if estimated is not None and actual > 0 else None
            merged[record.step] = seen.model_copy(
                update={
                    "batches": seen.batches + record.batches,
                    "rows": seen.rows + record.rows,
                    "failed": seen.failed + record.failed,
                    "not_attempted": seen.not_attempted + record.not_attempted,
                    "usage": seen.usage + record.usage,  # every chunk's requests, not the first's (issue 24)
                    "actual_pool": sorted({*seen.actual_pool, *record.actual_pool}),
                    "estimated_tokens": _sum_or_none(seen.estimated_tokens, record.estimated_tokens),
                    "estimated_cost_usd": _sum_or_none(seen.estimated_cost_usd, record.estimated_cost_usd),
                    "reused_rows": seen.reused_rows + record.reused_rows,
                    "estimated_ms": estimated,
                    "actual_ms": actual,
                    "error_pct": None if error is None else round(error, 1),
                }
            )
    return list(merged.values())


def _sum_or_none(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
