"""Pipelined execution and `stream_pipeline`: rows move on, and come out, as soon as they are ready.

The barrier engine (`flows.engine.run_steps` over all rows) runs step 1 on every row, then step 2 on
every row, so one slow batch holds back the whole pipeline and nobody sees a row before the end.
`run_pipelined` cuts the rows into chunks and runs each chunk through the step chain on its own
(``run_steps(steps, chunk, ctx)``, the same engine), concurrently: a chunk goes to step 2 the moment
its step 1 is done. Only a step that needs every row (one served by the optimizer pool) is a
barrier: the chunks meet there, the step runs once over all rows, and chunking resumes after it.
Completed chunks are handed to a sink as they finish; the returned rows keep the input order.

`stream_pipeline(spec, data)` runs the ``run-pipeline`` flow with ``pipelined=True`` in a background
thread and yields output rows as they complete (each carries ``_row``, its input position), while
the flow run records its artifacts as usual. Every row it yields was first appended to a JSONL spool
file (``stream.partial_path``), so an interrupted stream (Ctrl+C) leaves its partial output readable.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from dspex.private import open_private
from flows.engine import ERROR_FIELD, EngineContext, StepRecord, run_steps
from flows.modes import RunMode
from flows.pools import priority
from flows.spec import ModuleStep

__all__ = [
    "PipelineStream",
    "chunk_bounds",
    "default_chunk_rows",
    "is_barrier",
    "run_pipelined",
    "stream_pipeline",
]

#: Receives each completed chunk of rows (in completion order).
Sink = Callable[[list[dict[str, Any]]], None]

# The flow reads its sink from here: a callable cannot be a flow parameter (parameters are stored).
_sink: contextvars.ContextVar[Sink | None] = contextvars.ContextVar("dspex_stream_sink", default=None)
_MAX_CONCURRENT_CHUNKS = 64
_FIRST_CHUNK_ROWS = 8


def is_barrier(step: Any) -> bool:
    """Whether a step needs every row at once (an optimizer-pool module), so chunks meet before it."""
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
    sink = sink or _sink.get()
    cancel = cancel or _cancel_event.get()
    size = chunk_rows or default_chunk_rows(len(rows))
    segments = _segments(steps)
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


def _segments(steps: list[Any]) -> list[tuple[bool, list[Any]]]:
    segments: list[tuple[bool, list[Any]]] = []
    for step in steps:
        if is_barrier(step):
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


# --- the caller's iterator ------------------------------------------------------------------------

_DONE = object()
#: Longest an interrupted stream waits for its run to wind down.
_WIND_DOWN_S = 120.0


class PipelineStream:
    """Output rows of a running pipeline as they complete; iterate it once.

    Attributes:
        partial_path: The JSONL spool of every row yielded so far (readable after an interruption).
        result: The `PipelineResult` once the stream is exhausted (None before).
        error: The exception the run ended with, if any (it is also raised by the iteration).
    """

    def __init__(self, start: Callable[[Sink], Any], partial_path: Path) -> None:
        self.partial_path = partial_path
        self.result: Any = None
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._cancel = threading.Event()
        self._start = start
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._thread is not None:
            raise RuntimeError("a PipelineStream can be iterated only once")
        self._thread = threading.Thread(target=self._run, name="dspex-stream", daemon=True)
        self._thread.start()
        try:
            with open_private(self.partial_path, "a") as spool:  # the rows are users' data: 0600
                while True:
                    item = self._queue.get()
                    if item is _DONE:
                        break
                    for row in item:
                        spool.write(json.dumps(row, default=str) + "\n")
                    spool.flush()  # before the rows are handed out: the spool is never behind
                    yield from item
        finally:
            # A consumer that stops early (or Ctrl+C) stops the run, and waits for it to wind down
            # (rows in flight finish their call, nothing new starts, the flow run records its end),
            # so the process never exits under a run that is still writing its state and output.
            self._cancel.set()
            self._thread.join(timeout=_WIND_DOWN_S)
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """Stop the run: no further chunk or step starts; what completed is kept."""
        self._cancel.set()

    def _run(self) -> None:
        def sink(rows: list[dict[str, Any]]) -> None:
            self._queue.put([dict(row) for row in rows])

        token = _cancel_event.set(self._cancel)
        try:
            self.result = self._start(sink)
        except BaseException as exc:  # handed to the consumer's thread
            self.error = exc
        finally:
            _cancel_event.reset(token)
            self._queue.put(_DONE)


_cancel_event: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "dspex_stream_cancel", default=None
)


def current_cancel() -> threading.Event | None:
    """The cancel event of the `PipelineStream` this flow runs for, if any."""
    return _cancel_event.get()


def stream_pipeline(
    spec: Any,
    data: Any = None,
    *,
    lm: Any = None,
    mode: RunMode = "auto",
    continue_on_error: bool | None = None,
    chunk_rows: int | None = None,
    resume: bool | None = None,
) -> PipelineStream:
    """Run a pipeline and iterate its output rows as they complete.

    The ``run-pipeline`` flow runs (pipelined) in a background thread and records its artifacts as
    usual; rows arrive in completion order, each with ``_row`` (its input position).

        stream = stream_pipeline(spec, data=rows)
        for row in stream:
            print(row["_row"], row["answer"])
        stream.result.summary  # once exhausted

    Args:
        spec: The pipeline (a `PipelineSpec` or its JSON).
        data: As for `run_pipeline`.
        lm: A DSPy LM for programmatic callers (never stored).
        mode: ``auto``, ``local`` or ``distributed`` (as for `run_pipeline`).
        continue_on_error: Override the spec's ``continue_on_error``.
        chunk_rows: Rows per chunk (default: `default_chunk_rows`).
        resume: Reuse rows earlier runs completed (default ``DSPEX_RESUME``; `flows.resume`).

    Raises:
        Whatever `run_pipeline` raises, from the iteration, after every completed row was yielded.
    """
    from dspex.settings import get_settings
    from flows.pipeline import run_pipeline

    def start(sink: Sink) -> Any:
        token = _sink.set(sink)
        try:
            return run_pipeline(
                spec,
                data=data,
                lm=lm,
                mode=mode,
                continue_on_error=continue_on_error,
                pipelined=True,
                chunk_rows=chunk_rows,
                resume=resume,
            )
        finally:
            _sink.reset(token)

    spool = get_settings().home.resolve() / "streams" / f"{uuid.uuid4().hex}.jsonl"
    return PipelineStream(start, spool)
