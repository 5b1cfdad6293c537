"""The ``run-step`` flow: what a work pool executes for one batch in distributed mode.

The pipeline flow writes a batch's rows as a payload on shared storage and runs this flow through
the pool's ``run-step-<pool>`` deployment. The flow reads the rows, builds the LM from *this*
worker's settings (LMs never travel between processes), runs the batch on an executor sized by the
pool's capacity, and writes the `tasks.batch.BatchResult` back under a deterministic name,
``results/<batch_key>``, with a small ``results/<batch_key>.ref.json`` sidecar, so the orchestrator
can read it by key whatever happened to the flow run's own result. The store is `flows.guards.resume`'s,
the one both executors use, so these results also serve later runs' resume.

It is idempotent: when the result for ``batch_key`` already exists (an earlier attempt finished but
its worker died before the orchestrator saw it), it is returned without running anything again, so a
re-dispatched batch contributes every row exactly once.

Rows are kept as they complete, not only at batch end (issue 26): given a ``resume_key`` (the
orchestrator's row-keyed key of the batch, `flows.guards.resume.BatchJournals`), each completed row is
appended to a row journal in the step's results folder, as in local mode. An attempt first reads
what earlier attempts at the batch journaled (a worker killed mid-batch) and runs only the other
rows; the result it stores has every row, in order, the journaled ones counted as ``reused``. The
orchestrator removes the journals once it has kept the result. A journal that cannot be written or
read is logged and the batch goes on (its rows are then kept at batch end, or run again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger
from pydantic import TypeAdapter

from dspex.exceptions import PipelineSpecError
from dspex.settings import Settings, get_settings
from flows.engine.spec import ModuleStep, RetrieveStep
from flows.guards.resume import (
    RESULTS_PREFIX,
    BatchJournals,
    RowJournal,
    read_batch_result,
    result_ref_uri,
    write_batch_result,
)
from tasks import tracing
from tasks.batch import BatchResult, RowError
from tasks.payloads import PayloadRef, confine, read_rows

__all__ = [
    "RESULTS_PREFIX",
    "execute_step_batch",
    "parse_step",
    "read_batch_result",
    "result_ref_uri",
    "run_step",
    "write_batch_result",
]

_STEP = TypeAdapter(ModuleStep | RetrieveStep)


def parse_step(step: dict[str, Any]) -> ModuleStep | RetrieveStep:
    """The module or retrieve step a ``run-step`` parameter describes.

    Raises:
        PipelineSpecError: Not a module or retrieve step (the message says what is wrong).
    """
    kind = step.get("kind")
    if kind not in ("module", "retrieve"):
        raise PipelineSpecError(
            f"run-step runs module and retrieve steps, not kind {kind!r}", step=step.get("name")
        )
    model: type[ModuleStep | RetrieveStep] = ModuleStep if kind == "module" else RetrieveStep
    try:
        return model.model_validate(step)
    except ValueError as exc:  # pydantic's ValidationError: say which step, keep the details
        raise PipelineSpecError(f"invalid step for run-step: {exc}", step=step.get("name")) from exc


def execute_step_batch(
    step: ModuleStep | RetrieveStep,
    rows: list[dict[str, Any]],
    *,
    batch_key: str,
    pool: str,
    settings: Settings,
    lm: Any = None,
    timeout_s: float | None = None,
    trace_rows: frozenset[int] | None = None,
    on_row_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> BatchResult:
    """Run one batch of a module or retrieve step on this process's pool executor.

    It is `flows.engine.executors.run.run_batch`, the function local mode runs: the same row retries,
    breaker, rate limits and timeout, so a batch behaves the same wherever it runs.

    Args:
        step: The step.
        rows: The batch's rows.
        batch_key: The batch's identity across attempts (for logs).
        pool: The pool this worker serves (sizes the executor: the pool's capacity).
        settings: This worker's settings.
        lm: The LM for module steps (default: built from ``settings``).
        timeout_s: Longest the batch may take (the orchestrator's route decision).
        trace_rows: In a traced run, the rows to trace in full (the orchestrator's sample).
        on_row_done: Called with each module row's index and outputs as it completes (the row journal).
    """
    from flows.engine.executors.run import run_batch

    # A worker is one of several processes calling the provider: its rate limits are shared.
    return run_batch(
        step,
        rows,
        pool=pool,
        settings=settings,
        lm=lm,
        timeout_s=timeout_s,
        shared_limits=True,
        trace_rows=trace_rows,
        on_row_done=on_row_done,
    )


def _journals(
    resume_key: str | None, step: ModuleStep | RetrieveStep, rows: list[dict[str, Any]], logger: Any
) -> tuple[BatchJournals | None, list[str]]:
    """The batch's journals and its rows' keys; (None, []) when its rows are not journaled."""
    if not resume_key or step.kind != "module":  # a retrieve batch's rows complete together
        return None, []
    journals = BatchJournals(resume_key)  # a malformed key is a PayloadError: bad input
    row_keys = journals.row_keys(step, rows)
    if row_keys is None:
        logger.warning(
            "batch rows do not match their resume key %s (this worker keys rows differently from "
            "the orchestrator: another program or DSPex version?); not journaling them",
            resume_key[:24],
        )
        return None, []
    return journals, row_keys


def _merged(
    n: int, done: dict[int, dict[str, Any]], todo: list[int], ran: BatchResult | None, pool: str
) -> BatchResult:
    """The whole batch's result: the rows earlier attempts journaled (``done``, reused) and those
    this attempt ran (``ran``, for the indices ``todo``), each row once, in batch order."""
    if ran is not None and not done:
        return ran
    outputs: list[dict[str, Any] | None] = [None] * n
    errors: list[RowError | None] = [None] * n
    latencies = [0.0] * n
    for i, found in done.items():
        outputs[i] = found
    if ran is None:
        return BatchResult(
            outputs=outputs, errors=errors, latencies_ms=latencies, wall_ms=0.0, reused=len(done), pool=pool
        )
    for j, i in enumerate(todo):
        outputs[i], errors[i], latencies[i] = ran.outputs[j], ran.errors[j], ran.latencies_ms[j]
    update = {
        "outputs": outputs,
        "errors": errors,
        "latencies_ms": latencies,
        "reused": ran.reused + len(done),
    }
    return ran.model_copy(update=update)


@flow(
    name="run-step",
    description="Run one batch of a pipeline step on this work pool (distributed mode).",
    validate_parameters=True,
    persist_result=False,  # the result travels by reference, under results/<batch_key>
)
def run_step(
    step: dict[str, Any],
    batch: PayloadRef,
    batch_key: str,
    pool: str = "general",
    timeout_s: float | None = None,
    trace_context: dict[str, str] | None = None,
    resume_key: str | None = None,
) -> PayloadRef:
    """Run one batch of ``step`` over the rows ``batch`` refers to; store the result by key.

    Args:
        step: The module or retrieve step, as JSON (``step.model_dump(mode="json")``).
        batch: The batch's rows on shared storage.
        batch_key: The batch's identity; its result is stored under ``results/<batch_key>``.
        pool: The pool this deployment serves (sizes the executor).
        timeout_s: Longest the batch may take (rows cut off fail, rows not started are not attempted).
        trace_context: The orchestrator's W3C trace context: when this worker can export spans
            (``OTEL_EXPORTER_OTLP_ENDPOINT``), the batch's spans join the run's trace.
        resume_key: The batch's row-keyed key (`flows.guards.resume.BatchJournals`): each row is journaled
            as it completes, and rows earlier attempts journaled are not run again (None: no journal).

    Returns:
        The reference of the stored `BatchResult`.
    """
    logger = get_run_logger()
    settings = get_settings()
    # Its parameters come from whoever can create flow runs: every read it makes (an earlier result,
    # the batch, a step's corpus or saved state) stays inside the roots, however the flow was started.
    with confine.fenced():
        found = read_batch_result(batch_key)
        if found is not None:
            logger.info("batch %s already has a result (%s); not recomputing it", batch_key, found[0].uri)
            return found[0]
        parsed = parse_step(step)
        rows = read_rows(batch)
        journals, row_keys = _journals(resume_key, parsed, rows, logger)
        kept = journals.read() if journals is not None else {}
        done = {i: kept[k] for i, k in enumerate(row_keys) if k in kept}
        todo = [i for i in range(len(rows)) if i not in done]
        if done:
            logger.info(
                "batch %s: %d row(s) an earlier attempt completed are kept, not run again; %d to run",
                batch_key,
                len(done),
                len(todo),
            )
        logger.info("step %s: %d rows on pool %s (batch %s)", parsed.name, len(todo), pool, batch_key)
        journal: RowJournal | None = None
        if journals is not None and todo:
            journal = journals.writer([row_keys[i] for i in todo])
        ran: BatchResult | None = None
        try:
            if todo or not done:
                with tracing.continue_trace(trace_context, settings) as trace_rows:
                    ran = execute_step_batch(
                        parsed,
                        [rows[i] for i in todo],
                        batch_key=batch_key,
                        pool=pool,
                        settings=settings,
                        timeout_s=timeout_s,
                        trace_rows=_subset(trace_rows, todo) if done else trace_rows,
                        on_row_done=journal.add if journal is not None else None,
                    )
        finally:
            if journal is not None:
                journal.close(remove=False)  # complete on storage; the orchestrator removes it
    result = _merged(len(rows), done, todo, ran, pool)
    ref = write_batch_result(result, batch_key)
    logger.info("batch %s done: %d failed of %d; result %s", batch_key, result.failed, len(rows), ref.uri)
    return ref


def _subset(trace_rows: frozenset[int] | None, todo: list[int]) -> frozenset[int] | None:
    """The traced rows among ``todo``, numbered as the rows this attempt runs."""
    if trace_rows is None:
        return None
    return frozenset(j for j, i in enumerate(todo) if i in trace_rows)
