"""Local mode: batches run in this process, on the bounded pools, one Prefect task run per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from dspex.settings import Settings
from flows.engine.executors.base import BatchExecutor, BatchRequest, ResultStore
from flows.engine.executors.run import run_batch
from flows.engine.pools import get_local_pool
from tasks.batch import BatchResult

__all__ = ["LocalExecutor", "run_batch_task"]


@task(name="run-batch", cache_policy=NO_CACHE)  # no Prefect retries: rows are retried inside (tasks.retry)
def run_batch_task(
    step: Any,
    rows: list[dict[str, Any]],
    *,
    pool: str,
    settings: Settings,
    lm: Any,
    timeout_s: float | None,
    stop: Callable[[], bool],
    on_row_failed: Callable[[BaseException], None] | None = None,
    on_row_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> BatchResult:
    """Prefect task around `run_batch` (one task run per batch, visible in the UI)."""
    return run_batch(
        step,
        rows,
        pool=pool,
        settings=settings,
        lm=lm,
        timeout_s=timeout_s,
        stop=stop,
        on_row_failed=on_row_failed,
        on_row_done=on_row_done,
    )


class LocalExecutor(BatchExecutor):
    """Runs batches on this process's pools (see `flows.engine.executors.base`).

    Args:
        settings: The effective settings.
        lm: The LM (None: built from the settings inside each batch).
        stop: The run's stop flag.
        store: Completed results to reuse and keep.
        on_row_failed: Called with each row's final error.
    """

    def __init__(
        self,
        settings: Settings,
        lm: Any = None,
        stop: Callable[[], bool] | None = None,
        store: ResultStore | None = None,
        on_row_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(stop, store)
        self.settings = settings
        self.lm = lm
        self.on_row_failed = on_row_failed

    def availability(self, pool: str) -> tuple[bool, str]:
        return get_local_pool(pool, self.settings).availability()

    def _run(self, request: BatchRequest) -> BatchResult:
        runner = run_batch_task.with_options(task_run_name=f"{request.step.name}-batch-{request.index}")
        result: BatchResult = runner(
            request.step,
            request.rows,
            pool=request.pool,
            settings=self.settings,
            lm=self.lm,
            timeout_s=request.timeout_s,
            stop=self.stop,
            on_row_failed=self.on_row_failed,
            on_row_done=request.rows_sink.add if request.rows_sink is not None else None,
        )
        return result
