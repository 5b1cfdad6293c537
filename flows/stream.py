"""`stream_pipeline`: iterate a pipeline's output rows as they complete.

`stream_pipeline(spec, data)` runs the ``run-pipeline`` flow with ``pipelined=True`` in a background
thread and yields output rows as they complete (each carries ``_row``, its input position), while
the flow run records its artifacts as usual. Every row it yields was first appended to a JSONL spool
file (``stream.partial_path``), so an interrupted stream (Ctrl+C) leaves its partial output readable.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dspex.private import open_private
from dspex.settings import get_settings
from flows.engine.modes import RunMode
from flows.engine.streaming import STREAM_CANCEL, STREAM_SINK, Sink
from flows.pipeline import run_pipeline

__all__ = ["PipelineStream", "current_cancel", "stream_pipeline"]


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

        token = STREAM_CANCEL.set(self._cancel)
        try:
            self.result = self._start(sink)
        except BaseException as exc:  # handed to the consumer's thread
            self.error = exc
        finally:
            STREAM_CANCEL.reset(token)
            self._queue.put(_DONE)


def current_cancel() -> threading.Event | None:
    """The cancel event of the `PipelineStream` this flow runs for, if any."""
    return STREAM_CANCEL.get()


def stream_pipeline(
    spec: Any,
    data: Any = None,
    *,
    lm: Any = None,
    mode: RunMode = "auto",
    continue_on_error: bool | None = None,
    chunk_rows: int | None = None,
    resume: bool | None = None,
    lm_batch: bool | None = None,
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
        resume: Reuse rows earlier runs completed (default ``DSPEX_RESUME``; `flows.guards.resume`).
        lm_batch: Send module steps' LM calls through the provider's batch API (as for
            `run_pipeline`; None: the spec's, else ``DSPEX_LM_BATCH_API``). A batch step is a barrier:
            its rows come out once the provider has answered every round; the stream waits for it
            here (``lm_batch_wait="poll"``), since a consumer is reading.

    Raises:
        Whatever `run_pipeline` raises, from the iteration, after every completed row was yielded.
    """

    def start(sink: Sink) -> Any:
        token = STREAM_SINK.set(sink)
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
                lm_batch=lm_batch,
                lm_batch_wait="poll",
            )
        finally:
            STREAM_SINK.reset(token)

    spool = get_settings().home.resolve() / "streams" / f"{uuid.uuid4().hex}.jsonl"
    return PipelineStream(start, spool)
